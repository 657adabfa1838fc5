// Package checkpoint saves and loads model checkpoints in the safetensors
// format, atomically, and manages a directory of numbered checkpoints.
//
// # The file format
//
// A safetensors file is, byte for byte:
//
//	[8 bytes]  N, the header length, unsigned 64-bit little-endian
//	[N bytes]  the header: a UTF-8 JSON object
//	[rest]     the data buffer: every tensor's elements, back to back
//
// The header maps each tensor name to its element type, its shape and the
// byte range of its elements in the data buffer (offsets count from the
// start of the buffer, not of the file), plus an optional "__metadata__"
// object of string keys and string values:
//
//	{"__metadata__":{"step":"1000"},
//	 "fc.weight":{"dtype":"F32","shape":[10,784],"data_offsets":[0,31360]},
//	 "fc.bias":{"dtype":"F32","shape":[10],"data_offsets":[31360,31400]}}
//
// Elements are little-endian and row-major (C order); a shape of [] is a
// scalar with one element, and a shape containing 0 has no elements. The
// dtypes are BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16,
// I32, U32, F32, C64, F64, I64 and U64 (the DType* constants). The format is
// the one written and read by the Python safetensors package and by
// Hugging Face tools, so PyTorch can load what this package writes, and
// this package can load what they write.
//
// # What is stored
//
// A File is a list of Tensors and a Metadata map. A Tensor is its Name,
// DType, Shape and raw Data bytes; F32, F64, I64 and I32 build tensors from
// Go slices, and Float32s, Float32sInto (allocation-free), Float64s, Int64s
// and Int32s read them back, failing if the dtype or size does not match.
// Encode writes the tensors in the order given, contiguous and without
// gaps, and pads the header with spaces to a multiple of 8 bytes so the data
// buffer starts 8-byte aligned. Metadata keys are written sorted.
//
// Training state such as the step, the learning-rate schedule position or
// the RNG seed belongs in Metadata (as strings) or in small tensors (an I64
// scalar for the step, for instance); optimizer moments are ordinary
// tensors with names of your choosing, e.g. "optim.adam.m.fc.weight".
//
// # Atomicity guarantees
//
// WriteFileAtomic (and Manager.Save, which uses it) writes the new file to
// a hidden temporary file in the target's directory, named
// "."+name+".<random>.tmp", fsyncs it, renames it over the target and then
// fsyncs the directory. Because a rename within a directory replaces the
// target in one step, a crash at any moment -- the process being killed,
// the machine losing power once the data has been synced -- leaves the
// target either absent (if it never existed), or holding the previous
// complete checkpoint, or holding the new complete checkpoint. It never
// leaves a partially written or mixed target.
//
// What a crash can leave behind is the temporary file, complete or
// partial. It is never read by this package, and Open and Manager.Save
// delete stale ".ckpt-*.tmp" files in the checkpoint directory. A failed
// save that returns an error removes its temporary file itself and leaves
// the target untouched. If only the final directory fsync fails, the new
// checkpoint is in place but may not survive a power loss; the error says
// so. These guarantees assume a POSIX file system with atomic rename (local
// disks; not all network file systems), and one writer per directory: a
// Manager deletes temporary files it did not create.
//
// # Managing a directory
//
// A Manager saves step N as Dir/ckpt-%010d.safetensors, lists checkpoints
// in step order, and after each save keeps only the Keep newest (Keep <= 0
// keeps all; the file just written is never deleted). Latest finds the
// newest checkpoint in a directory and Resolve accepts either a file or a
// directory, which is convenient for a --resume flag.
//
// # Example
//
//	m, err := checkpoint.Open("runs/mnist", 3) // keep the 3 newest
//	if err != nil {
//		return err
//	}
//	f := &checkpoint.File{
//		Tensors: []checkpoint.Tensor{
//			checkpoint.F32("fc.weight", []int{10, 784}, weights),
//			checkpoint.F32("fc.bias", []int{10}, bias),
//			checkpoint.I64("step", nil, []int64{step}),
//		},
//		Metadata: map[string]string{"format": "pt"},
//	}
//	if _, err := m.Save(step, f); err != nil {
//		return err
//	}
//
//	// Later, resuming:
//	path, err := checkpoint.Resolve(resumeFrom) // file or directory
//	if err != nil {
//		return err
//	}
//	f, err = checkpoint.ReadFile(path)
//	if err != nil {
//		return err
//	}
//	w, ok := f.Get("fc.weight")
//	if !ok {
//		return fmt.Errorf("%s has no fc.weight", path)
//	}
//	if err := w.Float32sInto(weights); err != nil {
//		return err
//	}
//
// # Error policy
//
// Decoding treats its input as untrusted. Decode and ReadFile reject
// anything that is not a well-formed safetensors file -- a truncated file, a
// header length beyond the file or above MaxHeaderSize (100 MB), a header
// that is not UTF-8 JSON starting with '{', unknown dtypes or fields,
// duplicate tensor names or fields, negative, non-integer or overflowing
// shapes, data_offsets whose span is not dtype size times element count,
// offsets past the end of the data, overlapping tensors, bytes of the data
// buffer covered by no tensor, and metadata values that are not strings.
// They return a *DecodeError that wraps ErrCorrupt and names the file (in
// ReadFile) and the tensor concerned. They never panic on bad input, and
// they allocate memory in proportion to the header, never to sizes claimed
// by it. Decoded tensors' Data slices point into the input buffer.
//
// Encode and WriteFileAtomic validate before writing anything: an invalid
// tensor (unknown dtype, data length not matching the shape, duplicate or
// reserved name, invalid UTF-8) gives an error wrapping ErrInvalid. The
// typed accessors also wrap ErrInvalid on a dtype or size mismatch. Latest
// and Resolve wrap ErrNoCheckpoint when a directory holds no checkpoint,
// and Resolve wraps fs.ErrNotExist for a missing path. I/O errors are
// returned wrapped, with the path, so errors.Is(err, fs.ErrNotExist) and
// friends work throughout.
package checkpoint
