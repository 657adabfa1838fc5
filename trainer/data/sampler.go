package data

import (
	"math/bits"
	"math/rand/v2"
)

// Stream constants that keep the random streams of Permutation and
// Synthetic apart even for equal seeds.
const (
	domainPermutation = 0x7065726d75746521 // "permute!"
	domainSynthetic   = 0x73796e7468657421 // "synthet!"
)

// Permutation returns a random permutation of 0..n-1 that depends only on
// (n, seed, epoch). A run that stops at epoch e after p samples resumes
// exactly with Permutation(n, seed, e)[p:]; nothing else needs saving.
//
// The order is defined by this package, not by the Go release: a PCG
// (math/rand/v2, whose output is specified) seeded with
// (splitmix64(seed), splitmix64(epoch ^ "permute!")), and a Fisher-Yates
// shuffle from the last element down with Lemire's unbiased bounded
// integers. Changing any of that changes every training run, so the test
// pins a few outputs.
func Permutation(n int, seed uint64, epoch int) []int {
	p := make([]int, n)
	PermutationInto(p, seed, epoch)
	return p
}

// PermutationInto fills dst with the permutation Permutation(len(dst),
// seed, epoch) without allocating.
func PermutationInto(dst []int, seed uint64, epoch int) {
	for i := range dst {
		dst[i] = i
	}
	var src rand.PCG
	src.Seed(splitmix64(seed), splitmix64(uint64(epoch)^domainPermutation))
	for i := len(dst) - 1; i > 0; i-- {
		j := uint64n(&src, uint64(i)+1)
		dst[i], dst[j] = dst[j], dst[i]
	}
}

// uint64n returns a uniform integer in [0, n), n > 0 (Lemire, "Fast Random
// Integer Generation in an Interval", 2019).
func uint64n(src *rand.PCG, n uint64) uint64 {
	hi, lo := bits.Mul64(src.Uint64(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(src.Uint64(), n)
		}
	}
	return hi
}

// splitmix64 is the SplitMix64 finaliser; it turns nearby seeds (0, 1, 2,
// ...) into unrelated PCG states.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
