/*
 * standin.c - a TEST DOUBLE for NVIDIA's NCCL (libnccl.so.2), over host memory.
 *
 * It implements the C ABI of NCCL 2.19 (the subset gotrain uses) with real
 * semantics between processes (POSIX shared memory) and between threads of
 * one process. Buffers are HOST pointers; cudaStream_t arguments are ignored
 * and every call completes before it returns. Not for production use.
 *
 * Build: gcc -O2 -shared -fPIC -o libnccl.so.2 standin.c -lpthread -lrt
 *
 * Environment:
 *   NCCL_STANDIN_TIMEOUT_MS      wait limit for joins, collectives, send/recv (default 60000)
 *   NCCL_STANDIN_SLOT_BYTES      per-rank staging slot for collectives (default 1 MiB)
 *   NCCL_STANDIN_P2P_CHUNK_BYTES per-pair mailbox for send/recv (default 64 KiB, 4 KiB above 16 ranks)
 * All ranks of a communicator must use the same slot and mailbox sizes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------------ ABI -- */

typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
  ncclNumResults = 8
} ncclResult_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4, ncclNumOps = 5 } ncclRedOp_t;

typedef enum {
  ncclInt8 = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat16 = 6,
  ncclFloat32 = 7,
  ncclFloat64 = 8,
  ncclBfloat16 = 9,
  ncclNumTypes = 10
} ncclDataType_t;

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
  char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef void *cudaStream_t;

typedef struct {
  size_t size;
  unsigned int magic;
  unsigned int version;
  int blocking;
  int cgaClusterSize;
  int minCTAs;
  int maxCTAs;
  const char *netName;
  int splitShare;
} ncclConfig_t;

typedef struct ncclComm *ncclComm_t;

/* ------------------------------------------------------------ constants -- */

#define STANDIN_VERSION 21903
#define MAX_RANKS 1024
#define ID_MAGIC "GOTRAIN-NCCL-SI1" /* 16 bytes, no NUL stored */
#define ID_NAME_OFF 16
#define ID_NAME_MAX 96
#define ERR_MAX 512

/* --------------------------------------------------------- shared memory -- */

typedef struct {
  int32_t kind, dtype, op, root;
  uint64_t count;
} coll_desc;

typedef struct {
  _Alignas(64) _Atomic int32_t present;
  _Atomic int32_t pid;
  _Atomic uint64_t arrive; /* barrier generation this rank has reached */
  coll_desc desc;          /* written before a barrier, read after it */
} rank_rec;

typedef struct {
  _Atomic int32_t nranks;
  _Atomic int32_t joined;
  _Atomic uint64_t slot_bytes;
  _Atomic uint64_t p2p_bytes;
  _Atomic int32_t abort_claim; /* CAS 0->1 by the rank that writes abort_msg */
  _Atomic int32_t aborted;     /* set (release) after abort_msg is written */
  _Atomic int32_t abort_rank;
  _Atomic int32_t abort_code;
  char abort_msg[ERR_MAX];
  rank_rec rank[MAX_RANKS];
} shm_hdr;

typedef struct {
  _Atomic uint64_t posted;   /* chunks written by the sender */
  _Atomic uint64_t consumed; /* chunks read by the receiver */
  uint64_t total;            /* bytes of the message this chunk belongs to */
  uint64_t off;              /* offset of this chunk in the message */
  uint64_t len;              /* bytes in this chunk */
  char pad[64 - 40];
  /* data follows */
} mailbox;

/* --------------------------------------------------------------- comm ---- */

struct ncclComm {
  int rank, nranks, dev;
  char name[ID_NAME_MAX];
  int fd;
  void *base;
  size_t map_bytes;
  shm_hdr *hdr;
  size_t slot_bytes, p2p_bytes, slots_off, mb_off, mb_stride;
  uint64_t gen;
  long timeout_ms;

  _Atomic int inflight;
  _Atomic int local_abort;
  _Atomic int init_state; /* ncclInProgress while a nonblocking init runs */
  _Atomic int async_err;
  pthread_t init_thread;
  int has_init_thread;
  ncclUniqueId id;

  pthread_mutex_t err_mu;
  char last_err[ERR_MAX];
};

/* --------------------------------------------------------- last errors --- */

static pthread_mutex_t g_err_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_last_err[ERR_MAX];
static __thread char t_err_buf[ERR_MAX];

static void set_err(struct ncclComm *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(struct ncclComm *c, const char *fmt, ...) {
  char buf[ERR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (c) {
    pthread_mutex_lock(&c->err_mu);
    memcpy(c->last_err, buf, sizeof buf);
    pthread_mutex_unlock(&c->err_mu);
  }
  pthread_mutex_lock(&g_err_mu);
  memcpy(g_last_err, buf, sizeof buf);
  pthread_mutex_unlock(&g_err_mu);
}

/* ------------------------------------------------------------- helpers --- */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long env_long(const char *name, long def) {
  const char *s = getenv(name);
  if (!s || !*s) return def;
  char *end;
  long v = strtol(s, &end, 10);
  if (*end || v <= 0) return def;
  return v;
}

static size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

static size_t dt_size(int dt) {
  switch (dt) {
  case ncclInt8: case ncclUint8: return 1;
  case ncclFloat16: case ncclBfloat16: return 2;
  case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
  case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
  default: return 0;
  }
}

static const char *dt_name(int dt) {
  static const char *n[] = {"int8", "uint8", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64", "bfloat16"};
  return dt >= 0 && dt < ncclNumTypes ? n[dt] : "invalid";
}

static const char *op_name(int op) {
  static const char *n[] = {"sum", "prod", "max", "min", "avg"};
  return op >= 0 && op < ncclNumOps ? n[op] : "invalid";
}

enum { K_ALLREDUCE = 1, K_BROADCAST, K_REDUCE, K_ALLGATHER, K_REDUCESCATTER, K_SEND, K_RECV };

static const char *kind_name(int k) {
  switch (k) {
  case K_ALLREDUCE: return "ncclAllReduce";
  case K_BROADCAST: return "ncclBroadcast";
  case K_REDUCE: return "ncclReduce";
  case K_ALLGATHER: return "ncclAllGather";
  case K_REDUCESCATTER: return "ncclReduceScatter";
  case K_SEND: return "ncclSend";
  case K_RECV: return "ncclRecv";
  }
  return "?";
}

/* Is the process alive? A zombie counts as dead. */
static int pid_dead(int pid) {
  if (pid <= 0 || pid == getpid()) return 0;
  if (kill(pid, 0) == -1 && errno == ESRCH) return 1;
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X')) return 1;
  return 0;
}

/* Record a failure in the shared header so that every rank stops waiting. */
static void shared_abort(struct ncclComm *c, int code, const char *msg) {
  if (!c->hdr) return;
  int32_t zero = 0;
  if (atomic_compare_exchange_strong(&c->hdr->abort_claim, &zero, 1)) {
    snprintf(c->hdr->abort_msg, sizeof c->hdr->abort_msg, "%s", msg);
    atomic_store(&c->hdr->abort_rank, c->rank);
    atomic_store(&c->hdr->abort_code, code);
    atomic_store_explicit(&c->hdr->aborted, 1, memory_order_release);
  }
}

/* Fail the communicator: message, async error, and a shared abort. */
static ncclResult_t fail(struct ncclComm *c, ncclResult_t code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static ncclResult_t fail(struct ncclComm *c, ncclResult_t code, const char *fmt, ...) {
  char buf[ERR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  set_err(c, "%s", buf);
  int zero = 0;
  atomic_compare_exchange_strong(&c->async_err, &zero, (int)code);
  shared_abort(c, code, buf);
  return code;
}

static ncclResult_t check_aborted(struct ncclComm *c, const char *what) {
  if (atomic_load(&c->local_abort)) {
    set_err(c, "rank %d: %s: communicator was aborted (ncclCommAbort)", c->rank, what);
    return ncclRemoteError;
  }
  if (c->hdr && atomic_load_explicit(&c->hdr->aborted, memory_order_acquire)) {
    int ar = atomic_load(&c->hdr->abort_rank);
    if (ar == c->rank) {
      int e = atomic_load(&c->async_err);
      set_err(c, "rank %d: %s: communicator failed earlier: %s", c->rank, what, c->hdr->abort_msg);
      return e ? (ncclResult_t)e : ncclRemoteError;
    }
    set_err(c, "rank %d: %s: communicator aborted by rank %d: %s", c->rank, what, ar, c->hdr->abort_msg);
    int zero = 0;
    atomic_compare_exchange_strong(&c->async_err, &zero, (int)ncclRemoteError);
    return ncclRemoteError;
  }
  return ncclSuccess;
}

/* ---------------------------------------------------------------- waits --- */

typedef int (*missing_fn)(struct ncclComm *c, void *arg, int *out, int max);

typedef struct {
  int64_t start, last_pid_check;
  unsigned iter;
} waiter;

static void w_init(waiter *w) {
  w->start = now_ms();
  w->last_pid_check = w->start;
  w->iter = 0;
}

static int fmt_ranks(char *buf, size_t cap, const int *r, int n) {
  size_t used = 0;
  buf[0] = 0;
  for (int i = 0; i < n && used + 16 < cap; i++) used += snprintf(buf + used, cap - used, "%s%d", i ? "," : "", r[i]);
  if (n > 0 && used + 16 >= cap) snprintf(buf + used, cap - used, ",...");
  return n;
}

/* One step of a wait: checks abort, dead peers and the timeout, then backs off.
 * Returns non-success when the wait must end. */
static ncclResult_t w_check(struct ncclComm *c, waiter *w, const char *what, missing_fn miss, void *arg, int can_check_pids) {
  ncclResult_t r = check_aborted(c, what);
  if (r) return r;
  int64_t t = now_ms();
  if (can_check_pids && t - w->last_pid_check >= 50) {
    w->last_pid_check = t;
    int m[64];
    int n = miss(c, arg, m, 64);
    for (int i = 0; i < n; i++) {
      int pid = atomic_load(&c->hdr->rank[m[i]].pid);
      if (pid_dead(pid))
        return fail(c, ncclRemoteError, "rank %d: rank %d (pid %d) exited while rank %d waited in %s", c->rank, m[i], pid, c->rank, what);
    }
  }
  if (t - w->start >= c->timeout_ms) {
    int m[MAX_RANKS];
    int n = miss(c, arg, m, MAX_RANKS);
    char list[256];
    fmt_ranks(list, sizeof list, m, n);
    return fail(c, ncclSystemError, "rank %d: timed out after %ld ms in %s waiting for rank%s %s (NCCL_STANDIN_TIMEOUT_MS)", c->rank,
                c->timeout_ms, what, n == 1 ? "" : "s", n ? list : "?");
  }
  w->iter++;
  if (w->iter < 64) {
    sched_yield();
  } else {
    unsigned k = w->iter - 64;
    long us = k < 6 ? (20L << k) : 1000;
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
  }
  return ncclSuccess;
}

static int miss_barrier(struct ncclComm *c, void *arg, int *out, int max) {
  uint64_t g = *(uint64_t *)arg;
  int n = 0;
  for (int i = 0; i < c->nranks && n < max; i++)
    if (atomic_load(&c->hdr->rank[i].arrive) < g) out[n++] = i;
  return n;
}

static int miss_join(struct ncclComm *c, void *arg, int *out, int max) {
  (void)arg;
  int n = 0;
  for (int i = 0; i < c->nranks && n < max; i++)
    if (!atomic_load(&c->hdr->rank[i].present)) out[n++] = i;
  return n;
}

static int miss_peer(struct ncclComm *c, void *arg, int *out, int max) {
  (void)c;
  if (max < 1) return 0;
  out[0] = *(int *)arg;
  return 1;
}

static ncclResult_t barrier(struct ncclComm *c, const char *what) {
  uint64_t g = ++c->gen;
  shm_hdr *h = c->hdr;
  atomic_store_explicit(&h->rank[c->rank].arrive, g, memory_order_release);
  waiter w;
  w_init(&w);
  int first = 0;
  for (;;) {
    while (first < c->nranks && atomic_load_explicit(&h->rank[first].arrive, memory_order_acquire) >= g) first++;
    if (first == c->nranks) return ncclSuccess;
    ncclResult_t r = w_check(c, &w, what, miss_barrier, &g, 1);
    if (r) return r;
  }
}

/* ------------------------------------------------------ float16/bfloat16 -- */

static float h2f(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, x;
  if (e == 0) {
    if (m == 0) {
      x = sign;
    } else {
      int sh = 0;
      while (!(m & 0x400)) { m <<= 1; sh++; }
      m &= 0x3ff;
      x = sign | ((uint32_t)(113 - sh) << 23) | (m << 13);
    }
  } else if (e == 31) {
    x = sign | 0x7f800000 | (m << 13);
  } else {
    x = sign | ((e + 112) << 23) | (m << 13);
  }
  float f;
  memcpy(&f, &x, 4);
  return f;
}

static uint16_t f2h(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  uint32_t ax = x & 0x7fffffff;
  if (ax > 0x7f800000) return sign | 0x7e00 | (uint16_t)((ax >> 13) & 0x3ff); /* NaN stays NaN */
  if (ax >= 0x477ff000) return sign | 0x7c00;                                  /* rounds to infinity */
  if (ax < 0x38800000) {                                                       /* half subnormal or zero */
    uint32_t E = ax >> 23;
    if (E == 0) return sign;
    uint32_t m = (ax & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - E;
    if (shift >= 25) return sign;
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return sign | (uint16_t)q;
  }
  uint32_t h = ((((ax >> 23) - 112) << 10) | ((ax & 0x7fffff) >> 13));
  uint32_t rem = ax & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return sign | (uint16_t)h;
}

static float b2f(uint16_t b) {
  uint32_t x = (uint32_t)b << 16;
  float f;
  memcpy(&f, &x, 4);
  return f;
}

static uint16_t f2b(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40);
  x += 0x7fff + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}

static float op_f(int op, float a, float b) {
  switch (op) {
  case ncclProd: return a * b;
  case ncclMax: return b > a ? b : a;
  case ncclMin: return b < a ? b : a;
  default: return a + b;
  }
}

/* dst[j] = reduce over i in 0..n-1 of src_i[j], src_i = src0 + i*stride; rank order. */
static void reduce_into(void *dst, const char *src0, size_t stride, int n, size_t m, int dt, int op) {
  if (m == 0) return;
  if (dt == ncclFloat16 || dt == ncclBfloat16) {
    int bf = dt == ncclBfloat16;
    uint16_t *d = dst;
    for (size_t j = 0; j < m; j++) {
      uint16_t acc;
      memcpy(&acc, src0 + j * 2, 2);
      for (int i = 1; i < n; i++) {
        uint16_t v;
        memcpy(&v, src0 + (size_t)i * stride + j * 2, 2);
        float r = op_f(op, bf ? b2f(acc) : h2f(acc), bf ? b2f(v) : h2f(v));
        acc = bf ? f2b(r) : f2h(r);
      }
      if (op == ncclAvg) {
        float r = (bf ? b2f(acc) : h2f(acc)) / (float)n;
        acc = bf ? f2b(r) : f2h(r);
      }
      d[j] = acc;
    }
    return;
  }
#define RED(T, UT)                                                                                       \
  do {                                                                                                   \
    T *d = dst;                                                                                          \
    memcpy(d, src0, m * sizeof(T));                                                                      \
    for (int i = 1; i < n; i++) {                                                                        \
      const T *s = (const T *)(src0 + (size_t)i * stride);                                               \
      switch (op) {                                                                                      \
      case ncclProd: for (size_t j = 0; j < m; j++) d[j] = (T)((UT)d[j] * (UT)s[j]); break;              \
      case ncclMax: for (size_t j = 0; j < m; j++) d[j] = s[j] > d[j] ? s[j] : d[j]; break;              \
      case ncclMin: for (size_t j = 0; j < m; j++) d[j] = s[j] < d[j] ? s[j] : d[j]; break;              \
      default: for (size_t j = 0; j < m; j++) d[j] = (T)((UT)d[j] + (UT)s[j]); break;                    \
      }                                                                                                  \
    }                                                                                                    \
    if (op == ncclAvg)                                                                                   \
      for (size_t j = 0; j < m; j++) d[j] = (T)(d[j] / (T)n);                                           \
  } while (0)
  switch (dt) {
  case ncclInt8: RED(int8_t, uint8_t); break;
  case ncclUint8: RED(uint8_t, uint8_t); break;
  case ncclInt32: RED(int32_t, uint32_t); break;
  case ncclUint32: RED(uint32_t, uint32_t); break;
  case ncclInt64: RED(int64_t, uint64_t); break;
  case ncclUint64: RED(uint64_t, uint64_t); break;
  case ncclFloat32: RED(float, float); break;
  case ncclFloat64: RED(double, double); break;
  }
#undef RED
}

/* ------------------------------------------------------------ comm setup -- */

static char *slot(struct ncclComm *c, int r) { return (char *)c->base + c->slots_off + (size_t)r * c->slot_bytes; }
static mailbox *mbox(struct ncclComm *c, int src, int dst) {
  return (mailbox *)((char *)c->base + c->mb_off + ((size_t)src * c->nranks + dst) * c->mb_stride);
}

static void unmap_comm(struct ncclComm *c) {
  if (c->base) munmap(c->base, c->map_bytes);
  if (c->fd >= 0) close(c->fd);
  c->base = NULL;
  c->hdr = NULL;
  c->fd = -1;
}

static int id_name(const ncclUniqueId *id, char *out) {
  if (memcmp(id->internal, ID_MAGIC, 16) != 0) return -1;
  const char *n = id->internal + ID_NAME_OFF;
  size_t l = strnlen(n, ID_NAME_MAX);
  if (l == 0 || l >= ID_NAME_MAX || n[0] != '/') return -1;
  memcpy(out, n, l + 1);
  return 0;
}

static ncclResult_t do_init(struct ncclComm *c) {
  int n = c->nranks, rank = c->rank;
  size_t slot_b = (size_t)env_long("NCCL_STANDIN_SLOT_BYTES", 1 << 20);
  size_t min_slot = (size_t)8 * n;
  if (slot_b < min_slot) slot_b = min_slot;
  slot_b = round_up(slot_b, 64);
  size_t p2p_b = (size_t)env_long("NCCL_STANDIN_P2P_CHUNK_BYTES", n <= 16 ? 64 << 10 : 4 << 10);
  p2p_b = round_up(p2p_b, 64);
  c->slot_bytes = slot_b;
  c->p2p_bytes = p2p_b;
  c->slots_off = round_up(sizeof(shm_hdr), 4096);
  c->mb_off = c->slots_off + (size_t)n * slot_b;
  c->mb_stride = sizeof(mailbox) + p2p_b;
  size_t size = round_up(c->mb_off + (size_t)n * n * c->mb_stride, 4096);

  c->fd = shm_open(c->name, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (c->fd < 0) {
    set_err(c, "rank %d: shm_open(%s): %s", rank, c->name, strerror(errno));
    return ncclSystemError;
  }
  struct stat st;
  if (fstat(c->fd, &st) != 0) {
    set_err(c, "rank %d: fstat(%s): %s", rank, c->name, strerror(errno));
    unmap_comm(c);
    return ncclSystemError;
  }
  if ((size_t)st.st_size < size && ftruncate(c->fd, (off_t)size) != 0) {
    set_err(c, "rank %d: ftruncate(%s, %zu): %s", rank, c->name, size, strerror(errno));
    unmap_comm(c);
    return ncclSystemError;
  }
  int fe = posix_fallocate(c->fd, 0, (off_t)size);
  if (fe == ENOSPC) {
    set_err(c, "rank %d: no space in /dev/shm for %zu bytes (%s)", rank, size, c->name);
    unmap_comm(c);
    shm_unlink(c->name);
    return ncclSystemError;
  }
  c->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
  if (c->base == MAP_FAILED) {
    c->base = NULL;
    set_err(c, "rank %d: mmap(%s, %zu): %s", rank, c->name, size, strerror(errno));
    unmap_comm(c);
    return ncclSystemError;
  }
  c->map_bytes = size;
  shm_hdr *h = c->hdr = c->base;

  int32_t zero = 0;
  if (!atomic_compare_exchange_strong(&h->nranks, &zero, n) && zero != n) {
    set_err(c, "rank %d: ncclCommInitRank: nranks=%d but another rank created the communicator with nranks=%d", rank, n, zero);
    unmap_comm(c);
    return ncclInvalidArgument;
  }
  uint64_t z64 = 0;
  if (!atomic_compare_exchange_strong(&h->slot_bytes, &z64, slot_b) && z64 != slot_b) {
    set_err(c, "rank %d: NCCL_STANDIN_SLOT_BYTES differs between ranks (%zu here, %llu elsewhere)", rank, slot_b, (unsigned long long)z64);
    unmap_comm(c);
    return ncclInvalidUsage;
  }
  z64 = 0;
  if (!atomic_compare_exchange_strong(&h->p2p_bytes, &z64, p2p_b) && z64 != p2p_b) {
    set_err(c, "rank %d: NCCL_STANDIN_P2P_CHUNK_BYTES differs between ranks (%zu here, %llu elsewhere)", rank, p2p_b, (unsigned long long)z64);
    unmap_comm(c);
    return ncclInvalidUsage;
  }
  zero = 0;
  if (!atomic_compare_exchange_strong(&h->rank[rank].present, &zero, 1)) {
    set_err(c, "rank %d: ncclCommInitRank: rank %d already joined this communicator (same unique id used twice?)", rank, rank);
    unmap_comm(c);
    return ncclInvalidArgument;
  }
  atomic_store(&h->rank[rank].pid, (int32_t)getpid());
  atomic_fetch_add(&h->joined, 1);

  waiter w;
  w_init(&w);
  while (atomic_load(&h->joined) < n) {
    ncclResult_t r = w_check(c, &w, "ncclCommInitRank (waiting for ranks to join)", miss_join, NULL, 0);
    if (r) {
      /* Make sure a late joiner fails too instead of finding a stale segment. */
      shm_unlink(c->name);
      unmap_comm(c);
      return r;
    }
  }
  /* Everyone has the segment mapped: remove the name so nothing leaks. */
  shm_unlink(c->name);
  return ncclSuccess;
}

static struct ncclComm *new_comm(int nranks, int rank, const char *name, const ncclUniqueId *id) {
  struct ncclComm *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->rank = rank;
  c->nranks = nranks;
  c->dev = rank % 8;
  c->fd = -1;
  c->timeout_ms = env_long("NCCL_STANDIN_TIMEOUT_MS", 60000);
  snprintf(c->name, sizeof c->name, "%s", name);
  if (id) c->id = *id;
  pthread_mutex_init(&c->err_mu, NULL);
  atomic_store(&c->init_state, ncclInProgress);
  return c;
}

static void free_comm(struct ncclComm *c) {
  unmap_comm(c);
  pthread_mutex_destroy(&c->err_mu);
  free(c);
}

static void *init_thread_main(void *arg) {
  struct ncclComm *c = arg;
  ncclResult_t r = do_init(c);
  atomic_store(&c->init_state, (int)r);
  return NULL;
}

static ncclResult_t init_rank(ncclComm_t *out, int nranks, ncclUniqueId id, int rank, int blocking) {
  if (!out) {
    set_err(NULL, "ncclCommInitRank: comm pointer is NULL");
    return ncclInvalidArgument;
  }
  *out = NULL;
  if (nranks < 1 || nranks > MAX_RANKS) {
    set_err(NULL, "ncclCommInitRank: invalid nranks %d (1..%d)", nranks, MAX_RANKS);
    return ncclInvalidArgument;
  }
  if (rank < 0 || rank >= nranks) {
    set_err(NULL, "ncclCommInitRank: invalid rank %d for nranks %d", rank, nranks);
    return ncclInvalidArgument;
  }
  char name[ID_NAME_MAX];
  if (id_name(&id, name) != 0) {
    set_err(NULL, "ncclCommInitRank: invalid unique id (not made by this stand-in's ncclGetUniqueId)");
    return ncclInvalidArgument;
  }
  struct ncclComm *c = new_comm(nranks, rank, name, &id);
  if (!c) {
    set_err(NULL, "ncclCommInitRank: out of memory");
    return ncclSystemError;
  }
  if (!blocking) {
    if (pthread_create(&c->init_thread, NULL, init_thread_main, c) == 0) {
      c->has_init_thread = 1;
      *out = c;
      return ncclSuccess;
    }
  }
  ncclResult_t r = do_init(c);
  if (r != ncclSuccess) {
    free_comm(c);
    return r;
  }
  atomic_store(&c->init_state, ncclSuccess);
  *out = c;
  return ncclSuccess;
}

/* Start of every call on a communicator; pair with leave(). */
static ncclResult_t enter(struct ncclComm *c, const char *what) {
  if (!c) {
    set_err(NULL, "%s: communicator is NULL", what);
    return ncclInvalidArgument;
  }
  atomic_fetch_add(&c->inflight, 1);
  int st;
  while ((st = atomic_load(&c->init_state)) == ncclInProgress) {
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
  }
  if (st != ncclSuccess) {
    atomic_fetch_sub(&c->inflight, 1);
    set_err(c, "rank %d: %s: communicator initialization failed: %s", c->rank, what, c->last_err);
    return (ncclResult_t)st;
  }
  ncclResult_t r = check_aborted(c, what);
  if (r) {
    atomic_fetch_sub(&c->inflight, 1);
    return r;
  }
  return ncclSuccess;
}

static void leave(struct ncclComm *c) { atomic_fetch_sub(&c->inflight, 1); }

/* ---------------------------------------------------------- collectives -- */

typedef struct {
  int kind;
  struct ncclComm *comm;
  const void *send;
  void *recv;
  size_t count;
  int dt, op, root; /* root doubles as peer for send/recv */
  size_t done;      /* send/recv progress in bytes */
} op_t;

static ncclResult_t run_coll(struct ncclComm *c, const op_t *a) {
  const char *what = kind_name(a->kind);
  int n = c->nranks, me = c->rank;
  size_t es = dt_size(a->dt);
  coll_desc d = {a->kind, a->dt, (a->kind == K_BROADCAST || a->kind == K_ALLGATHER) ? 0 : a->op,
                 (a->kind == K_BROADCAST || a->kind == K_REDUCE) ? a->root : 0, a->count};
  c->hdr->rank[me].desc = d;
  size_t celems = a->kind == K_REDUCESCATTER ? c->slot_bytes / (es * n) : c->slot_bytes / es;
  size_t count = a->count;
  char *mys = slot(c, me);
  const char *send = a->send;
  char *recv = a->recv;
  size_t off = 0;
  int first = 1;
  do {
    size_t m = count - off < celems ? count - off : celems;
    /* stage */
    switch (a->kind) {
    case K_ALLREDUCE: case K_REDUCE: case K_ALLGATHER:
      if (m) memcpy(mys, send + off * es, m * es);
      break;
    case K_BROADCAST:
      if (me == a->root && m) memcpy(mys, send + off * es, m * es);
      break;
    case K_REDUCESCATTER:
      for (int b = 0; b < n && m; b++) memcpy(mys + (size_t)b * m * es, send + ((size_t)b * count + off) * es, m * es);
      break;
    }
    ncclResult_t r = barrier(c, what);
    if (r) return r;
    if (first) {
      first = 0;
      for (int i = 0; i < n; i++) {
        const coll_desc *o = &c->hdr->rank[i].desc;
        if (memcmp(o, &d, sizeof d) != 0) {
          const coll_desc *z = &c->hdr->rank[0].desc;
          int bad = i == 0 ? me : i;
          const coll_desc *b = &c->hdr->rank[bad].desc;
          set_err(c,
                  "rank %d: mismatched collective calls: rank 0 called %s(count=%llu, %s, %s, root=%d) but rank %d called %s(count=%llu, %s, %s, "
                  "root=%d)",
                  me, kind_name(z->kind), (unsigned long long)z->count, dt_name(z->dtype), op_name(z->op), z->root, bad, kind_name(b->kind),
                  (unsigned long long)b->count, dt_name(b->dtype), op_name(b->op), b->root);
          ncclResult_t br = barrier(c, what);
          return br ? br : ncclInvalidUsage;
        }
      }
    }
    /* compute */
    switch (a->kind) {
    case K_ALLREDUCE:
      reduce_into(recv + off * es, slot(c, 0), c->slot_bytes, n, m, a->dt, a->op);
      break;
    case K_REDUCE:
      if (me == a->root) reduce_into(recv + off * es, slot(c, 0), c->slot_bytes, n, m, a->dt, a->op);
      break;
    case K_BROADCAST:
      if ((me != a->root || recv != send) && m) memcpy(recv + off * es, slot(c, a->root), m * es);
      break;
    case K_ALLGATHER:
      for (int i = 0; i < n && m; i++) memcpy(recv + ((size_t)i * count + off) * es, slot(c, i), m * es);
      break;
    case K_REDUCESCATTER:
      reduce_into(recv + off * es, slot(c, 0) + (size_t)me * m * es, c->slot_bytes, n, m, a->dt, a->op);
      break;
    }
    r = barrier(c, what);
    if (r) return r;
    off += m;
  } while (off < count);
  return ncclSuccess;
}

/* ------------------------------------------------------------ send/recv --- */

/* Progress a batch of sends and receives of one communicator until all are done.
 * Messages between one ordered pair are delivered in issue order. */
static ncclResult_t run_p2p(struct ncclComm *c, op_t **ops, int k) {
  int me = c->rank;
  waiter w;
  w_init(&w);
  for (;;) {
    int progress = 0, pending = 0, stuck_peer = -1, stuck_kind = 0;
    for (int i = 0; i < k; i++) {
      op_t *o = ops[i];
      size_t bytes = o->count * dt_size(o->dt);
      if (o->done >= bytes) continue;
      int blocked = 0;
      for (int j = 0; j < i && !blocked; j++) {
        op_t *p = ops[j];
        if (p->kind == o->kind && p->root == o->root && p->done < p->count * dt_size(p->dt)) blocked = 1;
      }
      pending++;
      if (blocked) continue;
      if (o->kind == K_SEND) {
        mailbox *mb = mbox(c, me, o->root);
        uint64_t posted = atomic_load_explicit(&mb->posted, memory_order_relaxed);
        if (atomic_load_explicit(&mb->consumed, memory_order_acquire) == posted) {
          size_t len = bytes - o->done < c->p2p_bytes ? bytes - o->done : c->p2p_bytes;
          mb->total = bytes;
          mb->off = o->done;
          mb->len = len;
          memcpy((char *)(mb + 1), (const char *)o->send + o->done, len);
          atomic_store_explicit(&mb->posted, posted + 1, memory_order_release);
          o->done += len;
          progress = 1;
          if (o->done >= bytes) pending--;
        } else if (stuck_peer < 0) {
          stuck_peer = o->root;
          stuck_kind = K_SEND;
        }
      } else {
        mailbox *mb = mbox(c, o->root, me);
        uint64_t consumed = atomic_load_explicit(&mb->consumed, memory_order_relaxed);
        if (atomic_load_explicit(&mb->posted, memory_order_acquire) > consumed) {
          if (mb->total != bytes || mb->off != o->done) {
            return fail(c, ncclInvalidUsage,
                        "rank %d: ncclRecv from rank %d expected %zu bytes (%zu %s) but rank %d sent a message of %llu bytes", me, o->root,
                        bytes, o->count, dt_name(o->dt), o->root, (unsigned long long)mb->total);
          }
          memcpy((char *)o->recv + o->done, (const char *)(mb + 1), mb->len);
          o->done += mb->len;
          atomic_store_explicit(&mb->consumed, consumed + 1, memory_order_release);
          progress = 1;
          if (o->done >= bytes) pending--;
        } else if (stuck_peer < 0) {
          stuck_peer = o->root;
          stuck_kind = K_RECV;
        }
      }
    }
    if (pending == 0) return ncclSuccess;
    if (progress) {
      w_init(&w);
      continue;
    }
    char what[96];
    snprintf(what, sizeof what, "%s %s rank %d", kind_name(stuck_kind ? stuck_kind : K_RECV), stuck_kind == K_SEND ? "to" : "from",
             stuck_peer);
    ncclResult_t r = w_check(c, &w, what, miss_peer, &stuck_peer, stuck_peer >= 0);
    if (r) return r;
  }
}

/* ------------------------------------------------------------ groups ----- */

static __thread int t_group_depth;
static __thread op_t *t_ops;
static __thread int t_nops, t_capops;

static ncclResult_t run_ops(struct ncclComm *c, op_t *ops, int n) {
  const char *what = "ncclGroupEnd";
  int mine = 0;
  for (int i = 0; i < n; i++)
    if (ops[i].comm == c) mine++, what = mine == 1 ? kind_name(ops[i].kind) : "ncclGroupEnd";
  ncclResult_t r = enter(c, what);
  if (r) return r;
  op_t **batch = NULL;
  int nb = 0;
  for (int i = 0; i < n && !r; i++) {
    if (ops[i].comm != c) continue;
    if (ops[i].kind == K_SEND || ops[i].kind == K_RECV) {
      op_t **nbuf = realloc(batch, sizeof(op_t *) * (size_t)(nb + 1));
      if (!nbuf) {
        r = fail(c, ncclSystemError, "rank %d: out of memory", c->rank);
        break;
      }
      batch = nbuf;
      batch[nb++] = &ops[i];
      continue;
    }
    if (nb) {
      r = run_p2p(c, batch, nb);
      nb = 0;
      if (r) break;
    }
    r = run_coll(c, &ops[i]);
  }
  if (!r && nb) r = run_p2p(c, batch, nb);
  free(batch);
  leave(c);
  return r;
}

typedef struct {
  struct ncclComm *c;
  op_t *ops;
  int n;
  ncclResult_t r;
} group_job;

static void *group_job_main(void *arg) {
  group_job *j = arg;
  j->r = run_ops(j->c, j->ops, j->n);
  return NULL;
}

static ncclResult_t exec_ops(op_t *ops, int n) {
  struct ncclComm **comms = NULL;
  int nc = 0;
  for (int i = 0; i < n; i++) {
    int seen = 0;
    for (int j = 0; j < nc; j++) seen |= comms[j] == ops[i].comm;
    if (!seen) {
      struct ncclComm **nb = realloc(comms, sizeof *comms * (size_t)(nc + 1));
      if (!nb) {
        free(comms);
        set_err(NULL, "ncclGroupEnd: out of memory");
        return ncclSystemError;
      }
      comms = nb;
      comms[nc++] = ops[i].comm;
    }
  }
  ncclResult_t r = ncclSuccess;
  if (nc == 1) {
    r = run_ops(comms[0], ops, n);
  } else if (nc > 1) {
    /* Several communicators (e.g. from ncclCommInitAll) driven by one thread: one helper thread each. */
    group_job *jobs = calloc((size_t)nc, sizeof *jobs);
    pthread_t *th = calloc((size_t)nc, sizeof *th);
    int *started = calloc((size_t)nc, sizeof *started);
    if (!jobs || !th || !started) {
      free(jobs), free(th), free(started), free(comms);
      set_err(NULL, "ncclGroupEnd: out of memory");
      return ncclSystemError;
    }
    for (int i = 0; i < nc; i++) {
      jobs[i] = (group_job){comms[i], ops, n, ncclSuccess};
      started[i] = pthread_create(&th[i], NULL, group_job_main, &jobs[i]) == 0;
      if (!started[i]) jobs[i].r = ncclSystemError, set_err(comms[i], "ncclGroupEnd: pthread_create failed");
    }
    for (int i = 0; i < nc; i++) {
      if (started[i]) pthread_join(th[i], NULL);
      if (!r && jobs[i].r) r = jobs[i].r;
    }
    if (r) {
      /* Make the failing communicator's message the thread's/global last error. */
      for (int i = 0; i < nc; i++)
        if (jobs[i].r == r) {
          char msg[ERR_MAX];
          pthread_mutex_lock(&comms[i]->err_mu);
          memcpy(msg, comms[i]->last_err, sizeof msg);
          pthread_mutex_unlock(&comms[i]->err_mu);
          set_err(NULL, "%s", msg);
          break;
        }
    }
    free(jobs), free(th), free(started);
  }
  free(comms);
  return r;
}

static ncclResult_t submit(const op_t *o) {
  if (t_group_depth > 0) {
    if (t_nops == t_capops) {
      int nc = t_capops ? t_capops * 2 : 16;
      op_t *nb = realloc(t_ops, sizeof(op_t) * (size_t)nc);
      if (!nb) {
        set_err(o->comm, "ncclGroup: out of memory");
        return ncclSystemError;
      }
      t_ops = nb;
      t_capops = nc;
    }
    t_ops[t_nops++] = *o;
    return ncclSuccess;
  }
  op_t copy = *o;
  return exec_ops(&copy, 1);
}

/* Validation shared by all data calls. */
static ncclResult_t check_comm(struct ncclComm *c, const char *what) {
  if (!c) {
    set_err(NULL, "%s: communicator is NULL", what);
    return ncclInvalidArgument;
  }
  return ncclSuccess;
}

static ncclResult_t check_dt(struct ncclComm *c, const char *what, int dt) {
  if (dt_size(dt) == 0) {
    set_err(c, "rank %d: %s: invalid data type %d", c->rank, what, dt);
    return ncclInvalidArgument;
  }
  return ncclSuccess;
}

static ncclResult_t check_op(struct ncclComm *c, const char *what, int op) {
  if (op < 0 || op >= ncclNumOps) {
    set_err(c, "rank %d: %s: invalid reduction operation %d", c->rank, what, op);
    return ncclInvalidArgument;
  }
  return ncclSuccess;
}

static ncclResult_t check_rank(struct ncclComm *c, const char *what, const char *role, int r) {
  if (r < 0 || r >= c->nranks) {
    set_err(c, "rank %d: %s: invalid %s %d (nranks %d)", c->rank, what, role, r, c->nranks);
    return ncclInvalidArgument;
  }
  return ncclSuccess;
}

static ncclResult_t check_buf(struct ncclComm *c, const char *what, const char *role, const void *p, size_t count) {
  if (!p && count > 0) {
    set_err(c, "rank %d: %s: %s is NULL with count %zu", c->rank, what, role, count);
    return ncclInvalidArgument;
  }
  return ncclSuccess;
}

static ncclResult_t check_size(struct ncclComm *c, const char *what, size_t count, int dt, size_t mult) {
  size_t es = dt_size(dt);
  if (count > (SIZE_MAX / es) / (mult ? mult : 1)) {
    set_err(c, "rank %d: %s: count %zu too large", c->rank, what, count);
    return ncclInvalidArgument;
  }
  return ncclSuccess;
}

#define TRY(x)                                                                                                                             \
  do {                                                                                                                                     \
    ncclResult_t _r = (x);                                                                                                                 \
    if (_r) return _r;                                                                                                                     \
  } while (0)

/* ------------------------------------------------------------- exports --- */

EXPORT ncclResult_t ncclGetVersion(int *version) {
  if (!version) {
    set_err(NULL, "ncclGetVersion: version is NULL");
    return ncclInvalidArgument;
  }
  *version = STANDIN_VERSION;
  return ncclSuccess;
}

EXPORT ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId) {
  if (!uniqueId) {
    set_err(NULL, "ncclGetUniqueId: uniqueId is NULL");
    return ncclInvalidArgument;
  }
  uint64_t rnd = 0;
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  int ok = 0;
  if (fd >= 0) {
    ok = read(fd, &rnd, sizeof rnd) == (ssize_t)sizeof rnd;
    close(fd);
  }
  if (!ok) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    static _Atomic uint64_t ctr;
    rnd = ((uint64_t)getpid() << 40) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ atomic_fetch_add(&ctr, 1) * 0x9e3779b97f4a7c15ull;
  }
  memset(uniqueId, 0, sizeof *uniqueId);
  memcpy(uniqueId->internal, ID_MAGIC, 16);
  snprintf(uniqueId->internal + ID_NAME_OFF, ID_NAME_MAX, "/gotrain-nccl-%016llx", (unsigned long long)rnd);
  return ncclSuccess;
}

EXPORT ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank) {
  return init_rank(comm, nranks, commId, rank, 1);
}

EXPORT ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank, ncclConfig_t *config) {
  int blocking = 1;
  if (config) {
    if (config->size != 0 && config->size < offsetof(ncclConfig_t, cgaClusterSize)) {
      set_err(NULL, "ncclCommInitRankConfig: config->size %zu too small", config->size);
      return ncclInvalidArgument;
    }
    if (config->blocking == 0) blocking = 0;
  }
  return init_rank(comm, nranks, commId, rank, blocking);
}

typedef struct {
  ncclComm_t *out;
  int nranks, rank;
  ncclUniqueId id;
  ncclResult_t r;
} initall_job;

static void *initall_main(void *arg) {
  initall_job *j = arg;
  j->r = init_rank(j->out, j->nranks, j->id, j->rank, 1);
  return NULL;
}

EXPORT ncclResult_t ncclCommDestroy(ncclComm_t comm);

EXPORT ncclResult_t ncclCommInitAll(ncclComm_t *comms, int ndev, const int *devlist) {
  if (!comms) {
    set_err(NULL, "ncclCommInitAll: comms is NULL");
    return ncclInvalidArgument;
  }
  if (ndev < 1 || ndev > MAX_RANKS) {
    set_err(NULL, "ncclCommInitAll: invalid ndev %d", ndev);
    return ncclInvalidArgument;
  }
  ncclUniqueId id;
  TRY(ncclGetUniqueId(&id));
  initall_job *jobs = calloc((size_t)ndev, sizeof *jobs);
  pthread_t *th = calloc((size_t)ndev, sizeof *th);
  int *started = calloc((size_t)ndev, sizeof *started);
  if (!jobs || !th || !started) {
    free(jobs), free(th), free(started);
    set_err(NULL, "ncclCommInitAll: out of memory");
    return ncclSystemError;
  }
  ncclResult_t r = ncclSuccess;
  for (int i = 0; i < ndev; i++) {
    comms[i] = NULL;
    jobs[i] = (initall_job){&comms[i], ndev, i, id, ncclSuccess};
    started[i] = pthread_create(&th[i], NULL, initall_main, &jobs[i]) == 0;
    if (!started[i]) {
      set_err(NULL, "ncclCommInitAll: pthread_create failed");
      jobs[i].r = ncclSystemError;
    }
  }
  for (int i = 0; i < ndev; i++) {
    if (started[i]) pthread_join(th[i], NULL);
    if (!r && jobs[i].r) r = jobs[i].r;
  }
  if (r) {
    for (int i = 0; i < ndev; i++)
      if (comms[i]) {
        ncclCommDestroy(comms[i]);
        comms[i] = NULL;
      }
  } else {
    for (int i = 0; i < ndev; i++) comms[i]->dev = devlist ? devlist[i] : i;
  }
  free(jobs), free(th), free(started);
  return r;
}

EXPORT ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  TRY(enter(comm, "ncclCommFinalize"));
  leave(comm);
  return ncclSuccess;
}

static void join_init(struct ncclComm *c) {
  if (c->has_init_thread) {
    pthread_join(c->init_thread, NULL);
    c->has_init_thread = 0;
  }
}

EXPORT ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) {
    set_err(NULL, "ncclCommDestroy: communicator is NULL");
    return ncclInvalidArgument;
  }
  join_init(comm);
  while (atomic_load(&comm->inflight) > 0) {
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
  free_comm(comm);
  return ncclSuccess;
}

EXPORT ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (!comm) {
    set_err(NULL, "ncclCommAbort: communicator is NULL");
    return ncclInvalidArgument;
  }
  atomic_store(&comm->local_abort, 1);
  /* The header is only mapped once initialization has got that far; the
   * init thread (if any) sees local_abort and gives up. */
  join_init(comm);
  if (comm->hdr) {
    char msg[ERR_MAX];
    snprintf(msg, sizeof msg, "rank %d called ncclCommAbort", comm->rank);
    shared_abort(comm, ncclRemoteError, msg);
  }
  while (atomic_load(&comm->inflight) > 0) {
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
  free_comm(comm);
  return ncclSuccess;
}

EXPORT const char *ncclGetErrorString(ncclResult_t result) {
  switch (result) {
  case ncclSuccess: return "no error";
  case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
  case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
  case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
  case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
  case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
  case ncclRemoteError: return "remote process exited or there was a network error";
  case ncclInProgress: return "NCCL operation in progress";
  default: return "unknown result code";
  }
}

EXPORT const char *ncclGetLastError(ncclComm_t comm) {
  if (comm) {
    pthread_mutex_lock(&comm->err_mu);
    memcpy(t_err_buf, comm->last_err, sizeof t_err_buf);
    pthread_mutex_unlock(&comm->err_mu);
    if (t_err_buf[0]) return t_err_buf;
  }
  pthread_mutex_lock(&g_err_mu);
  memcpy(t_err_buf, g_last_err, sizeof t_err_buf);
  pthread_mutex_unlock(&g_err_mu);
  return t_err_buf;
}

EXPORT ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *asyncError) {
  if (!comm || !asyncError) {
    set_err(comm, "ncclCommGetAsyncError: %s is NULL", comm ? "asyncError" : "communicator");
    return ncclInvalidArgument;
  }
  int st = atomic_load(&comm->init_state);
  if (st != ncclSuccess) {
    *asyncError = (ncclResult_t)st;
    return ncclSuccess;
  }
  int e = atomic_load(&comm->async_err);
  if (e) {
    *asyncError = (ncclResult_t)e;
    return ncclSuccess;
  }
  /* An abort (this rank's or another's) also becomes this communicator's
   * last error, naming the rank that aborted: otherwise ncclGetLastError
   * would fall back to the process-wide text, which another communicator
   * of the same process may have written. */
  ncclResult_t a = check_aborted(comm, "ncclCommGetAsyncError");
  if (a != ncclSuccess) {
    *asyncError = a;
    return ncclSuccess;
  }
  *asyncError = ncclSuccess;
  return ncclSuccess;
}

EXPORT ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
  TRY(check_comm(comm, "ncclCommCount"));
  if (!count) {
    set_err(comm, "ncclCommCount: count is NULL");
    return ncclInvalidArgument;
  }
  *count = comm->nranks;
  return ncclSuccess;
}

EXPORT ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device) {
  TRY(check_comm(comm, "ncclCommCuDevice"));
  if (!device) {
    set_err(comm, "ncclCommCuDevice: device is NULL");
    return ncclInvalidArgument;
  }
  *device = comm->dev;
  return ncclSuccess;
}

EXPORT ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
  TRY(check_comm(comm, "ncclCommUserRank"));
  if (!rank) {
    set_err(comm, "ncclCommUserRank: rank is NULL");
    return ncclInvalidArgument;
  }
  *rank = comm->rank;
  return ncclSuccess;
}

/* With fakecuda as the CUDA driver (gpu/cuda/fakecuda: device memory is
 * host memory, and a stream's work runs when the host waits for it), each
 * call first runs its stream's earlier work, which NCCL's kernels would
 * wait for on a GPU; then it reads the buffers. Without fakecuda there is
 * nothing to run and streams stay ignored. */
typedef int (*fake_sync_t)(cudaStream_t);
static void sync_stream(cudaStream_t stream) {
  static _Atomic(fake_sync_t) sync;
  static atomic_int looked;
  if (!atomic_load(&looked)) {
    atomic_store(&sync, (fake_sync_t)dlsym(RTLD_DEFAULT, "fakecuda_sync"));
    atomic_store(&looked, 1);
  }
  fake_sync_t f = atomic_load(&sync);
  if (f) f(stream);
}

EXPORT ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                                  ncclComm_t comm, cudaStream_t stream) {
  sync_stream(stream);
  const char *w = "ncclAllReduce";
  TRY(check_comm(comm, w));
  TRY(check_dt(comm, w, datatype));
  TRY(check_op(comm, w, op));
  TRY(check_size(comm, w, count, datatype, 1));
  TRY(check_buf(comm, w, "sendbuff", sendbuff, count));
  TRY(check_buf(comm, w, "recvbuff", recvbuff, count));
  op_t o = {K_ALLREDUCE, comm, sendbuff, recvbuff, count, datatype, op, 0, 0};
  return submit(&o);
}

EXPORT ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm,
                                  cudaStream_t stream) {
  sync_stream(stream);
  const char *w = "ncclBroadcast";
  TRY(check_comm(comm, w));
  TRY(check_dt(comm, w, datatype));
  TRY(check_rank(comm, w, "root", root));
  TRY(check_size(comm, w, count, datatype, 1));
  if (comm->rank == root) TRY(check_buf(comm, w, "sendbuff", sendbuff, count));
  TRY(check_buf(comm, w, "recvbuff", recvbuff, count));
  op_t o = {K_BROADCAST, comm, sendbuff, recvbuff, count, datatype, 0, root, 0};
  return submit(&o);
}

EXPORT ncclResult_t ncclBcast(void *buff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm, cudaStream_t stream) {
  return ncclBroadcast(buff, buff, count, datatype, root, comm, stream);
}

EXPORT ncclResult_t ncclReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op, int root,
                               ncclComm_t comm, cudaStream_t stream) {
  sync_stream(stream);
  const char *w = "ncclReduce";
  TRY(check_comm(comm, w));
  TRY(check_dt(comm, w, datatype));
  TRY(check_op(comm, w, op));
  TRY(check_rank(comm, w, "root", root));
  TRY(check_size(comm, w, count, datatype, 1));
  TRY(check_buf(comm, w, "sendbuff", sendbuff, count));
  if (comm->rank == root) TRY(check_buf(comm, w, "recvbuff", recvbuff, count));
  op_t o = {K_REDUCE, comm, sendbuff, recvbuff, count, datatype, op, root, 0};
  return submit(&o);
}

EXPORT ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype, ncclComm_t comm,
                                  cudaStream_t stream) {
  sync_stream(stream);
  const char *w = "ncclAllGather";
  TRY(check_comm(comm, w));
  TRY(check_dt(comm, w, datatype));
  TRY(check_size(comm, w, sendcount, datatype, (size_t)comm->nranks));
  TRY(check_buf(comm, w, "sendbuff", sendbuff, sendcount));
  TRY(check_buf(comm, w, "recvbuff", recvbuff, sendcount));
  op_t o = {K_ALLGATHER, comm, sendbuff, recvbuff, sendcount, datatype, 0, 0, 0};
  return submit(&o);
}

EXPORT ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount, ncclDataType_t datatype, ncclRedOp_t op,
                                      ncclComm_t comm, cudaStream_t stream) {
  sync_stream(stream);
  const char *w = "ncclReduceScatter";
  TRY(check_comm(comm, w));
  TRY(check_dt(comm, w, datatype));
  TRY(check_op(comm, w, op));
  TRY(check_size(comm, w, recvcount, datatype, (size_t)comm->nranks));
  TRY(check_buf(comm, w, "sendbuff", sendbuff, recvcount));
  TRY(check_buf(comm, w, "recvbuff", recvbuff, recvcount));
  op_t o = {K_REDUCESCATTER, comm, sendbuff, recvbuff, recvcount, datatype, op, 0, 0};
  return submit(&o);
}

EXPORT ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm, cudaStream_t stream) {
  sync_stream(stream);
  const char *w = "ncclSend";
  TRY(check_comm(comm, w));
  TRY(check_dt(comm, w, datatype));
  TRY(check_rank(comm, w, "peer", peer));
  TRY(check_size(comm, w, count, datatype, 1));
  TRY(check_buf(comm, w, "sendbuff", sendbuff, count));
  op_t o = {K_SEND, comm, sendbuff, NULL, count, datatype, 0, peer, 0};
  return submit(&o);
}

EXPORT ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm, cudaStream_t stream) {
  sync_stream(stream);
  const char *w = "ncclRecv";
  TRY(check_comm(comm, w));
  TRY(check_dt(comm, w, datatype));
  TRY(check_rank(comm, w, "peer", peer));
  TRY(check_size(comm, w, count, datatype, 1));
  TRY(check_buf(comm, w, "recvbuff", recvbuff, count));
  op_t o = {K_RECV, comm, NULL, recvbuff, count, datatype, 0, peer, 0};
  return submit(&o);
}

EXPORT ncclResult_t ncclGroupStart(void) {
  t_group_depth++;
  return ncclSuccess;
}

EXPORT ncclResult_t ncclGroupEnd(void) {
  if (t_group_depth <= 0) {
    set_err(NULL, "ncclGroupEnd: no matching ncclGroupStart");
    return ncclInvalidUsage;
  }
  if (--t_group_depth > 0) return ncclSuccess;
  op_t *ops = t_ops;
  int n = t_nops;
  t_ops = NULL;
  t_nops = t_capops = 0;
  ncclResult_t r = n ? exec_ops(ops, n) : ncclSuccess;
  free(ops);
  return r;
}
