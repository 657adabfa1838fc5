// Package docker holds gotrain's container images (Dockerfile: the gpu
// build on NVIDIA's CUDA 12 images; Dockerfile.cpu: the CPU build), the
// Slurm batch script (slurm/) and the Kubernetes manifests (k8s/: an
// Indexed Job with a headless Service, and a Kubeflow PyTorchJob).
//
// No Docker engine or cluster runs where gotrain is built, so the tests
// here check the files themselves: the Dockerfiles are parsed with
// BuildKit's own parser and linted (pinned bases, a non-root user, the
// gotrain entry point, every copied path present, every build argument
// used); the manifests are decoded strictly into the Kubernetes API types;
// and the environment each scheduler gives a rank is fed to gotrain's own
// rendezvous.FromEnv, so the files and the code agree on ranks and
// addresses.
package docker
