package etcdstore

import "go.uber.org/zap"

// nopLogger keeps the etcd client's own logging (zap) quiet: failures
// reach the caller as errors.
func nopLogger() *zap.Logger { return zap.NewNop() }
