package device

import (
	"fmt"
	"unsafe"
)

// Idler is a device that can say, without waiting, whether the work queued
// on its default stream is done (CUDA: cuStreamQuery).
type Idler interface {
	Idle() (bool, error)
}

// Staging carries host buffers through two buffers of a device, for a
// collective library that reads only device memory: it implements
// nccl.Staging over any Device whose buffers have addresses (Addresser).
// The copies are the device's Write and Read, ordered with its other work
// on the default stream.
//
// A collective that sends from slot 0 may run beside one that receives
// into slot 1 (a Send beside a Recv); two at once on the same slot may
// not.
type Staging struct {
	dev  Device
	slot [2]Buffer
	tmp  [2][]float32 // per slot, for buffers whose length or address is not a float32's
}

// NewStaging stages through dev's memory.
func NewStaging(dev Device) *Staging { return &Staging{dev: dev} }

// Reserve returns slot's address with room for bytes, growing it.
func (s *Staging) Reserve(slot, bytes int) (uintptr, error) {
	if slot < 0 || slot >= len(s.slot) {
		return 0, fmt.Errorf("device: staging slot %d (0 or 1)", slot)
	}
	if err := Grow(s.dev, &s.slot[slot], max((bytes+3)/4, 1)); err != nil {
		return 0, err
	}
	a, ok := s.slot[slot].(Addresser)
	if !ok {
		return 0, fmt.Errorf("device: %s's buffers have no address a library can take", s.dev.Name())
	}
	return a.Addr(), nil
}

// words is the float32 view of bytes of host memory at p when its length
// and address allow one (ok), else slot's scratch slice of the words'
// length.
func (s *Staging) words(slot int, p unsafe.Pointer, bytes int) (w []float32, ok bool) {
	n := (bytes + 3) / 4
	if bytes%4 == 0 && uintptr(p)%4 == 0 {
		return unsafe.Slice((*float32)(p), n), true
	}
	if cap(s.tmp[slot]) < n {
		s.tmp[slot] = make([]float32, n)
	}
	return s.tmp[slot][:n], false
}

// Put copies bytes of host memory at src into slot.
func (s *Staging) Put(slot int, src unsafe.Pointer, bytes int) (uintptr, error) {
	addr, err := s.Reserve(slot, bytes)
	if err != nil || bytes == 0 {
		return addr, err
	}
	w, ok := s.words(slot, src, bytes)
	if !ok {
		clear(w)
		copy(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(w))), bytes), unsafe.Slice((*byte)(src), bytes))
	}
	return addr, s.dev.Write(s.slot[slot], w)
}

// Get copies bytes of slot into host memory at dst.
func (s *Staging) Get(dst unsafe.Pointer, slot, bytes int) error {
	if slot < 0 || slot >= len(s.slot) || s.slot[slot] == nil {
		return fmt.Errorf("device: staging slot %d holds nothing", slot)
	}
	if bytes == 0 {
		return nil
	}
	w, ok := s.words(slot, dst, bytes)
	if err := s.dev.Read(w, s.slot[slot]); err != nil {
		return err
	}
	if !ok {
		copy(unsafe.Slice((*byte)(dst), bytes), unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(w))), bytes))
	}
	return nil
}

// Idle reports whether the device's default stream is done (see IdleOf).
func (s *Staging) Idle() (bool, error) { return IdleOf(s.dev) }

// IdleOf reports whether dev's default stream is done, without waiting:
// its Idle, or true for a device without one (its calls complete before
// they return).
func IdleOf(dev Device) (bool, error) {
	if i, ok := dev.(Idler); ok {
		return i.Idle()
	}
	return true, nil
}

// Free releases the slots.
func (s *Staging) Free() {
	for i, b := range s.slot {
		if b != nil {
			s.dev.Free(b)
			s.slot[i] = nil
		}
	}
}

// Grow makes *b a buffer of dev holding at least n values: it stays when
// large enough, else it is freed and a new one allocated (its contents are
// not kept). On an error *b is nil.
func Grow(dev Device, b *Buffer, n int) error {
	if *b != nil && (*b).Len() >= n {
		return nil
	}
	if *b != nil {
		dev.Free(*b)
		*b = nil
	}
	nb, err := dev.Alloc(n)
	if err != nil {
		return err
	}
	*b = nb
	return nil
}
