/*
 * driver.c - test driver for the NCCL stand-in (standin.c).
 *
 * usage: driver LIB SCENARIO RANK NRANKS IDHEX [ARGS...]
 *
 * LIB is the path of libnccl.so.2 (dlopened). IDHEX is the 128-byte unique id
 * in hex, or "-" to create one with ncclGetUniqueId and print "ID <hex>" first.
 * Each check prints one line: "OK <label> [hash=<fnv64>]" or "FAIL <label>: <why>".
 * Error scenarios print "ERR rc=<code> ms=<elapsed> msg=<ncclGetLastError>".
 * Exit status 2 means the driver itself could not run.
 *
 * gcc -O2 -o driver driver.c -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int res_t;
typedef struct ncclComm *comm_t;
typedef struct {
  char internal[128];
} uid_t_;
typedef struct {
  size_t size;
  unsigned magic, version;
  int blocking, cgaClusterSize, minCTAs, maxCTAs;
  const char *netName;
  int splitShare;
} config_t;

enum { Sum, Prod, Max, Min, Avg, NOPS };
enum { I8, U8, I32, U32, I64, U64, F16, F32, F64, BF16, NTYPES };
static const char *opn[] = {"sum", "prod", "max", "min", "avg"};
static const char *dtn[] = {"int8", "uint8", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64", "bfloat16"};
static const size_t dts[] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2};

static struct {
  res_t (*GetVersion)(int *);
  res_t (*GetUniqueId)(uid_t_ *);
  res_t (*CommInitRank)(comm_t *, int, uid_t_, int);
  res_t (*CommInitRankConfig)(comm_t *, int, uid_t_, int, config_t *);
  res_t (*CommInitAll)(comm_t *, int, const int *);
  res_t (*CommFinalize)(comm_t);
  res_t (*CommDestroy)(comm_t);
  res_t (*CommAbort)(comm_t);
  const char *(*GetErrorString)(res_t);
  const char *(*GetLastError)(comm_t);
  res_t (*CommGetAsyncError)(comm_t, res_t *);
  res_t (*CommCount)(comm_t, int *);
  res_t (*CommCuDevice)(comm_t, int *);
  res_t (*CommUserRank)(comm_t, int *);
  res_t (*AllReduce)(const void *, void *, size_t, int, int, comm_t, void *);
  res_t (*Broadcast)(const void *, void *, size_t, int, int, comm_t, void *);
  res_t (*Reduce)(const void *, void *, size_t, int, int, int, comm_t, void *);
  res_t (*AllGather)(const void *, void *, size_t, int, comm_t, void *);
  res_t (*ReduceScatter)(const void *, void *, size_t, int, int, comm_t, void *);
  res_t (*Send)(const void *, size_t, int, int, comm_t, void *);
  res_t (*Recv)(void *, size_t, int, int, comm_t, void *);
  res_t (*GroupStart)(void);
  res_t (*GroupEnd)(void);
} N;

static void die(const char *fmt, const char *a) {
  fprintf(stderr, fmt, a);
  fputc('\n', stderr);
  exit(2);
}

static void load(const char *path) {
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) die("dlopen: %s", dlerror());
#define SYM(f)                                                                                                                             \
  do {                                                                                                                                     \
    *(void **)&N.f = dlsym(h, "nccl" #f);                                                                                                  \
    if (!N.f) die("missing symbol %s", "nccl" #f);                                                                                         \
  } while (0)
  SYM(GetVersion); SYM(GetUniqueId); SYM(CommInitRank); SYM(CommInitRankConfig); SYM(CommInitAll); SYM(CommFinalize);
  SYM(CommDestroy); SYM(CommAbort); SYM(GetErrorString); SYM(GetLastError); SYM(CommGetAsyncError); SYM(CommCount);
  SYM(CommCuDevice); SYM(CommUserRank); SYM(AllReduce); SYM(Broadcast); SYM(Reduce); SYM(AllGather); SYM(ReduceScatter);
  SYM(Send); SYM(Recv); SYM(GroupStart); SYM(GroupEnd);
#undef SYM
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void msleep(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------- values --- */

static uint16_t f2h(float f) { /* exact for the small integers and halves used here; RNE otherwise */
  uint32_t x;
  memcpy(&x, &f, 4);
  uint16_t sign = (x >> 16) & 0x8000;
  uint32_t ax = x & 0x7fffffff;
  if (ax == 0) return sign;
  int e = (int)(ax >> 23) - 127 + 15;
  uint32_t h = ((uint32_t)e << 10) | ((ax & 0x7fffff) >> 13), rem = ax & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return sign | (uint16_t)h;
}
static double h2d(uint16_t h) {
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(m | 0x400, e - 25);
  return h & 0x8000 ? -v : v;
}
static uint16_t f2b(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  x += 0x7fff + ((x >> 16) & 1);
  return x >> 16;
}
static double b2d(uint16_t b) {
  uint32_t x = (uint32_t)b << 16;
  float f;
  memcpy(&f, &x, 4);
  return f;
}

static void put(int dt, void *b, size_t j, double v) {
  switch (dt) {
  case I8: ((int8_t *)b)[j] = (int8_t)v; break;
  case U8: ((uint8_t *)b)[j] = (uint8_t)v; break;
  case I32: ((int32_t *)b)[j] = (int32_t)v; break;
  case U32: ((uint32_t *)b)[j] = (uint32_t)v; break;
  case I64: ((int64_t *)b)[j] = (int64_t)v; break;
  case U64: ((uint64_t *)b)[j] = (uint64_t)v; break;
  case F16: ((uint16_t *)b)[j] = f2h((float)v); break;
  case F32: ((float *)b)[j] = (float)v; break;
  case F64: ((double *)b)[j] = v; break;
  case BF16: ((uint16_t *)b)[j] = f2b((float)v); break;
  }
}
static double get(int dt, const void *b, size_t j) {
  switch (dt) {
  case I8: return ((const int8_t *)b)[j];
  case U8: return ((const uint8_t *)b)[j];
  case I32: return ((const int32_t *)b)[j];
  case U32: return ((const uint32_t *)b)[j];
  case I64: return (double)((const int64_t *)b)[j];
  case U64: return (double)((const uint64_t *)b)[j];
  case F16: return h2d(((const uint16_t *)b)[j]);
  case F32: return ((const float *)b)[j];
  case F64: return ((const double *)b)[j];
  case BF16: return b2d(((const uint16_t *)b)[j]);
  }
  return 0;
}
static int is_int(int dt) { return dt <= U64; }
static int is_unsigned(int dt) { return dt == U8 || dt == U32 || dt == U64; }

/* Input value of rank r at element j for a given dtype/op. */
static double val(int dt, int op, int r, size_t j) {
  if (op == Prod) return 1 + (double)((r + j) % 2);
  double v = (double)((r * 7 + j * 3) % 11);
  return is_unsigned(dt) ? v : v - 5;
}

static double expect_red(int dt, int op, int n, size_t j) {
  double acc = val(dt, op, 0, j);
  for (int r = 1; r < n; r++) {
    double v = val(dt, op, r, j);
    switch (op) {
    case Prod: acc *= v; break;
    case Max: acc = v > acc ? v : acc; break;
    case Min: acc = v < acc ? v : acc; break;
    default: acc += v; break;
    }
  }
  if (op == Avg) acc = is_int(dt) ? trunc(acc / n) : acc / n;
  return acc;
}

static int close_enough(int dt, double got, double want) {
  if (is_int(dt) || got == want) return got == want;
  double tol = dt == F16 ? 2e-3 : dt == BF16 ? 1e-2 : dt == F32 ? 1e-6 : 1e-12;
  return fabs(got - want) <= tol * fabs(want) + 1e-9;
}

static uint64_t fnv(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

/* ------------------------------------------------------------- common --- */

static int g_rank, g_n;
static int g_fail;

static void report(const char *label, int ok, const char *why, const void *hashbuf, size_t hashlen) {
  if (ok) {
    if (hashbuf)
      printf("OK %s hash=%016llx\n", label, (unsigned long long)fnv(hashbuf, hashlen));
    else
      printf("OK %s\n", label);
  } else {
    printf("FAIL %s: %s\n", label, why);
    g_fail = 1;
  }
  fflush(stdout);
}

static int call_ok(const char *label, res_t r, comm_t c) {
  if (r == 0) return 1;
  char why[700];
  snprintf(why, sizeof why, "rc=%d (%s) last=%s", r, N.GetErrorString(r), N.GetLastError(c));
  report(label, 0, why, NULL, 0);
  return 0;
}

static void hex2id(const char *hex, uid_t_ *id) {
  if (strlen(hex) != 256) die("bad id hex length: %s", hex);
  for (int i = 0; i < 128; i++) {
    unsigned v;
    if (sscanf(hex + 2 * i, "%2x", &v) != 1) die("bad id hex: %s", hex);
    id->internal[i] = (char)v;
  }
}

static void id2hex(const uid_t_ *id, char *out) {
  for (int i = 0; i < 128; i++) sprintf(out + 2 * i, "%02x", (unsigned char)id->internal[i]);
}

static void garbage(void *b, size_t n) { memset(b, 0xa5, n); }

/* Verify buf[j] == want(j) for j < count; returns 1 if fine, else fills why. */
#define VERIFY(label, dt, buf, count, WANT, hashbuf, hashlen)                                                                             \
  do {                                                                                                                                     \
    int _ok = 1;                                                                                                                           \
    char _why[256] = "";                                                                                                                   \
    for (size_t j = 0; j < (count); j++) {                                                                                                 \
      double _w = (WANT), _g = get((dt), (buf), j);                                                                                       \
      if (!close_enough((dt), _g, _w)) {                                                                                                   \
        snprintf(_why, sizeof _why, "element %zu: got %.9g want %.9g", j, _g, _w);                                                        \
        _ok = 0;                                                                                                                           \
        break;                                                                                                                             \
      }                                                                                                                                    \
    }                                                                                                                                      \
    report((label), _ok, _why, (hashbuf), (hashlen));                                                                                      \
  } while (0)

/* ------------------------------------------------------------- matrix --- */

static void allreduce_case(comm_t c, int dt, int op, size_t count, int inplace) {
  char label[128];
  snprintf(label, sizeof label, "allreduce %s %s n=%zu %s", dtn[dt], opn[op], count, inplace ? "inplace" : "outofplace");
  size_t bytes = count * dts[dt];
  char *send = malloc(bytes + 1), *recv = inplace ? send : malloc(bytes + 1);
  for (size_t j = 0; j < count; j++) put(dt, send, j, val(dt, op, g_rank, j));
  if (!inplace) garbage(recv, bytes);
  if (call_ok(label, N.AllReduce(send, recv, count, dt, op, c, NULL), c))
    VERIFY(label, dt, recv, count, expect_red(dt, op, g_n, j), recv, bytes);
  if (!inplace) free(recv);
  free(send);
}

static void broadcast_case(comm_t c, int dt, size_t count, int root, int inplace) {
  char label[128];
  snprintf(label, sizeof label, "broadcast %s n=%zu root=%d %s", dtn[dt], count, root, inplace ? "inplace" : "outofplace");
  size_t bytes = count * dts[dt];
  char *send = malloc(bytes + 1), *recv = inplace ? send : malloc(bytes + 1);
  garbage(send, bytes);
  if (g_rank == root)
    for (size_t j = 0; j < count; j++) put(dt, send, j, val(dt, Sum, root, j));
  if (!inplace) garbage(recv, bytes);
  if (call_ok(label, N.Broadcast(g_rank == root ? send : (inplace ? send : NULL), recv, count, dt, root, c, NULL), c))
    VERIFY(label, dt, recv, count, val(dt, Sum, root, j), recv, bytes);
  if (!inplace) free(recv);
  free(send);
}

static void reduce_case(comm_t c, int dt, int op, size_t count, int root, int inplace) {
  char label[128];
  snprintf(label, sizeof label, "reduce %s %s n=%zu root=%d %s", dtn[dt], opn[op], count, root, inplace ? "inplace" : "outofplace");
  size_t bytes = count * dts[dt];
  char *send = malloc(bytes + 1), *recv = inplace ? send : malloc(bytes + 1);
  for (size_t j = 0; j < count; j++) put(dt, send, j, val(dt, op, g_rank, j));
  if (!inplace) garbage(recv, bytes);
  /* non-root ranks pass a NULL recvbuff out of place, as NCCL allows */
  void *rb = (g_rank == root || inplace) ? recv : NULL;
  if (call_ok(label, N.Reduce(send, rb, count, dt, op, root, c, NULL), c)) {
    if (g_rank == root)
      VERIFY(label, dt, recv, count, expect_red(dt, op, g_n, j), NULL, 0);
    else
      report(label, 1, "", NULL, 0);
  }
  if (!inplace) free(recv);
  free(send);
}

static void allgather_case(comm_t c, int dt, size_t count, int inplace) {
  char label[128];
  snprintf(label, sizeof label, "allgather %s n=%zu %s", dtn[dt], count, inplace ? "inplace" : "outofplace");
  size_t bytes = count * dts[dt];
  char *recv = malloc(bytes * g_n + 1), *send = inplace ? recv + bytes * g_rank : malloc(bytes + 1);
  garbage(recv, bytes * g_n);
  for (size_t j = 0; j < count; j++) put(dt, send, j, val(dt, Sum, g_rank, j));
  if (call_ok(label, N.AllGather(send, recv, count, dt, c, NULL), c))
    VERIFY(label, dt, recv, count * g_n, val(dt, Sum, (int)(j / count), j % count), recv, bytes * g_n);
  if (!inplace) free(send);
  free(recv);
}

static void reducescatter_case(comm_t c, int dt, int op, size_t count, int inplace) {
  char label[128];
  snprintf(label, sizeof label, "reducescatter %s %s n=%zu %s", dtn[dt], opn[op], count, inplace ? "inplace" : "outofplace");
  size_t bytes = count * dts[dt];
  char *send = malloc(bytes * g_n + 1), *recv = inplace ? send + bytes * g_rank : malloc(bytes + 1);
  for (size_t j = 0; j < count * g_n; j++) put(dt, send, j, val(dt, op, g_rank, j));
  if (!inplace) garbage(recv, bytes);
  if (call_ok(label, N.ReduceScatter(send, recv, count, dt, op, c, NULL), c))
    VERIFY(label, dt, recv, count, expect_red(dt, op, g_n, (size_t)g_rank * count + j), NULL, 0);
  if (!inplace) free(recv);
  free(send);
}

static size_t parse_counts(const char *s, size_t *out, int max) {
  int n = 0;
  while (*s && n < max) {
    out[n++] = strtoull(s, (char **)&s, 0);
    if (*s == ',') s++;
  }
  return (size_t)n;
}

static int dt_by_name(const char *s) {
  for (int i = 0; i < NTYPES; i++)
    if (!strcmp(s, dtn[i])) return i;
  die("unknown dtype %s", s);
  return -1;
}

/* matrix COUNTS DTYPES : every collective, every op, both placements. */
static void sc_matrix(comm_t c, int argc, char **argv) {
  if (argc < 2) die("%s", "matrix COUNTS DTYPES");
  size_t counts[16];
  size_t nc = parse_counts(argv[0], counts, 16);
  int dtl[NTYPES], nd = 0;
  char *dup = strdup(argv[1]);
  for (char *t = strtok(dup, ","); t; t = strtok(NULL, ",")) dtl[nd++] = dt_by_name(t);
  free(dup);
  for (size_t ci = 0; ci < nc; ci++)
    for (int di = 0; di < nd; di++) {
      int dt = dtl[di];
      size_t count = counts[ci];
      for (int ip = 0; ip < 2; ip++) {
        for (int op = 0; op < NOPS; op++) allreduce_case(c, dt, op, count, ip);
        for (int root = 0; root < g_n; root++) broadcast_case(c, dt, count, root, ip);
        reduce_case(c, dt, Sum, count, g_n - 1, ip);
        reduce_case(c, dt, Max, count, 0, ip);
        allgather_case(c, dt, count, ip);
        for (int op = 0; op < NOPS; op++) reducescatter_case(c, dt, op, count, ip);
      }
    }
}

/* p2p COUNT : all-to-all in one group (self included), then a blocking exchange. */
static double p2pval(int src, int dst, size_t j) { return (double)((src * 31 + dst * 7 + j) % 97); }

static void alltoall(comm_t c, int rank, int n, size_t count, const char *tag) {
  char label[128];
  snprintf(label, sizeof label, "%s alltoall n=%zu", tag, count);
  float *sb = malloc(sizeof(float) * count * n + 4), *rb = malloc(sizeof(float) * count * n + 4);
  for (int p = 0; p < n; p++)
    for (size_t j = 0; j < count; j++) sb[p * count + j] = (float)p2pval(rank, p, j);
  garbage(rb, sizeof(float) * count * n);
  res_t r = N.GroupStart();
  for (int p = 0; p < n && !r; p++) {
    r = N.Send(sb + p * count, count, F32, p, c, NULL);
    if (!r) r = N.Recv(rb + p * count, count, F32, p, c, NULL);
  }
  res_t r2 = N.GroupEnd();
  if (!r) r = r2;
  if (call_ok(label, r, c)) VERIFY(label, F32, rb, count * n, p2pval((int)(j / count), rank, j % count), NULL, 0);
  free(sb);
  free(rb);
}

static void sc_p2p(comm_t c, int argc, char **argv) {
  if (argc < 1) die("%s", "p2p COUNT");
  size_t count = strtoull(argv[0], NULL, 0);
  alltoall(c, g_rank, g_n, count, "group");
  /* A pair exchanging in both directions inside a group (rank 0 <-> rank 1). */
  if (g_rank < 2 && g_n >= 2) {
    char label[128];
    snprintf(label, sizeof label, "group pair both directions n=%zu", count);
    int peer = 1 - g_rank;
    double *sb = malloc(8 * count + 8), *rb = malloc(8 * count + 8);
    for (size_t j = 0; j < count; j++) sb[j] = p2pval(g_rank, peer, j);
    N.GroupStart();
    res_t r = N.Send(sb, count, F64, peer, c, NULL);
    res_t r1 = N.Recv(rb, count, F64, peer, c, NULL);
    res_t r2 = N.GroupEnd();
    if (!r) r = r1;
    if (!r) r = r2;
    if (call_ok(label, r, c)) VERIFY(label, F64, rb, count, p2pval(peer, g_rank, j), NULL, 0);
    /* Without a group: ordered send then recv / recv then send. */
    snprintf(label, sizeof label, "blocking send/recv n=%zu", count);
    if (g_rank == 0) {
      r = N.Send(sb, count, F64, peer, c, NULL);
      if (!r) r = N.Recv(rb, count, F64, peer, c, NULL);
    } else {
      r = N.Recv(rb, count, F64, peer, c, NULL);
      if (!r) r = N.Send(sb, count, F64, peer, c, NULL);
    }
    if (call_ok(label, r, c)) VERIFY(label, F64, rb, count, p2pval(peer, g_rank, j), NULL, 0);
    free(sb);
    free(rb);
  }
}

/* Print an error result in a fixed form for the Go test. */
static void print_err(const char *what, res_t r, int64_t t0, comm_t c) {
  printf("ERR %s rc=%d ms=%lld msg=%s\n", what, r, (long long)(now_ms() - t0), N.GetLastError(c));
  fflush(stdout);
}

/* exitearly: the last rank exits right after init; the others all-reduce. */
static void sc_exitearly(comm_t c, int hang) {
  if (g_rank == g_n - 1) {
    if (hang) msleep(atol(getenv("NCCL_STANDIN_TIMEOUT_MS") ? getenv("NCCL_STANDIN_TIMEOUT_MS") : "1000") * 2);
    fflush(stdout);
    _exit(0);
  }
  float x[4] = {1, 2, 3, 4};
  int64_t t0 = now_ms();
  res_t r = N.AllReduce(x, x, 4, F32, Sum, c, NULL);
  print_err("allreduce", r, t0, c);
  res_t ae = -1;
  N.CommGetAsyncError(c, &ae);
  printf("ASYNC %d\n", ae);
  t0 = now_ms();
  r = N.AllReduce(x, x, 4, F32, Sum, c, NULL);
  print_err("again", r, t0, c);
}

typedef struct {
  comm_t c;
  long delay;
  res_t r;
} abort_job;

static void *abort_main(void *arg) {
  abort_job *j = arg;
  msleep(j->delay);
  j->r = N.CommAbort(j->c);
  return NULL;
}

/* abort: rank 0 blocks in an all-reduce that nobody joins; a thread aborts it.
 * The other ranks wait, then find the communicator aborted. */
static int sc_abort(comm_t c) {
  float x[4] = {1, 2, 3, 4};
  if (g_rank == 0) {
    abort_job j = {c, 300, -1};
    pthread_t th;
    pthread_create(&th, NULL, abort_main, &j);
    int64_t t0 = now_ms();
    res_t r = N.AllReduce(x, x, 4, F32, Sum, c, NULL);
    print_err("blocked", r, t0, NULL);
    pthread_join(th, NULL);
    printf("ABORTRC %d\n", j.r);
    return 1; /* comm is gone */
  }
  msleep(1500);
  int64_t t0 = now_ms();
  res_t r = N.AllReduce(x, x, 4, F32, Sum, c, NULL);
  print_err("after", r, t0, c);
  res_t ae = -1;
  N.CommGetAsyncError(c, &ae);
  printf("ASYNC %d\n", ae);
  return 0;
}

/* mismatch: collective counts differ; then send/recv sizes differ. */
static void sc_mismatch(comm_t c) {
  float x[16] = {0};
  int64_t t0 = now_ms();
  res_t r = N.AllReduce(x, x, g_rank == 1 ? 9 : 8, F32, Sum, c, NULL);
  print_err("coll", r, t0, c);
  /* the communicator still works after a detected mismatch */
  r = N.AllReduce(x, x, 8, F32, Sum, c, NULL);
  printf("AFTER rc=%d\n", r);
  if (g_rank == 0) {
    r = N.Send(x, 4, F32, 1, c, NULL);
    print_err("send", r, t0, c);
  } else if (g_rank == 1) {
    r = N.Recv(x, 5, F32, 0, c, NULL);
    print_err("recv", r, t0, c);
  }
  fflush(stdout);
}

/* args: argument checking on a 1-rank communicator. */
static void expect_rc(const char *label, res_t got, res_t want, comm_t c) {
  char why[700];
  snprintf(why, sizeof why, "rc=%d want %d, last=%s", got, want, N.GetLastError(c));
  int ok = got == want && (want == 0 || strlen(N.GetLastError(c)) > 0);
  report(label, ok, why, NULL, 0);
}

static void sc_args(comm_t c) {
  float a[4] = {1, 2, 3, 4}, b[4];
  int v = 0;
  expect_rc("version", N.GetVersion(&v), 0, c);
  report("version==21903", v == 21903, "wrong version", NULL, 0);
  expect_rc("null comm", N.AllReduce(a, b, 4, F32, Sum, NULL, NULL), 4, NULL);
  expect_rc("bad dtype", N.AllReduce(a, b, 4, 42, Sum, c, NULL), 4, c);
  expect_rc("bad op", N.AllReduce(a, b, 4, F32, 17, c, NULL), 4, c);
  expect_rc("null send", N.AllReduce(NULL, b, 4, F32, Sum, c, NULL), 4, c);
  expect_rc("null recv", N.AllGather(a, NULL, 4, F32, c, NULL), 4, c);
  expect_rc("bad root", N.Broadcast(a, b, 4, F32, 1, c, NULL), 4, c);
  expect_rc("negative root", N.Reduce(a, b, 4, F32, Sum, -1, c, NULL), 4, c);
  expect_rc("bad peer", N.Send(a, 4, F32, 3, c, NULL), 4, c);
  expect_rc("bad recv peer", N.Recv(b, 4, F32, -2, c, NULL), 4, c);
  expect_rc("null count0 ok", N.AllReduce(NULL, NULL, 0, F32, Sum, c, NULL), 0, c);
  expect_rc("groupend without start", N.GroupEnd(), 5, NULL);
  int n = -1, r = -1, d = -1;
  expect_rc("count", N.CommCount(c, &n), 0, c);
  expect_rc("userrank", N.CommUserRank(c, &r), 0, c);
  expect_rc("cudevice", N.CommCuDevice(c, &d), 0, c);
  report("count/rank/device values", n == 1 && r == 0 && d == 0, "wrong values", NULL, 0);
  res_t ae = -1;
  expect_rc("asyncerror", N.CommGetAsyncError(c, &ae), 0, c);
  report("asyncerror==success", ae == 0, "nonzero async error", NULL, 0);
  expect_rc("asyncerror null", N.CommGetAsyncError(NULL, &ae), 4, NULL);
  uid_t_ id;
  comm_t c2 = NULL;
  N.GetUniqueId(&id);
  expect_rc("init bad rank", N.CommInitRank(&c2, 2, id, 2), 4, NULL);
  expect_rc("init bad nranks", N.CommInitRank(&c2, 0, id, 0), 4, NULL);
  uid_t_ bad;
  memset(&bad, 7, sizeof bad);
  expect_rc("init bad id", N.CommInitRank(&c2, 1, bad, 0), 4, NULL);
  report("error string", strlen(N.GetErrorString(4)) > 0 && strcmp(N.GetErrorString(0), N.GetErrorString(6)) != 0, "bad strings", NULL, 0);
  /* one-rank collectives are copies; self send/recv inside a group */
  expect_rc("1-rank allreduce", N.AllReduce(a, b, 4, F32, Sum, c, NULL), 0, c);
  report("1-rank allreduce value", b[3] == 4, "wrong value", NULL, 0);
  memset(b, 0, sizeof b);
  N.GroupStart();
  N.Send(a, 4, F32, 0, c, NULL);
  N.Recv(b, 4, F32, 0, c, NULL);
  expect_rc("self sendrecv", N.GroupEnd(), 0, c);
  report("self sendrecv value", b[2] == 3, "wrong value", NULL, 0);
  expect_rc("finalize", N.CommFinalize(c), 0, c);
}

/* ---------------------------------------------------- in-process ranks --- */

typedef struct {
  int rank, n;
  uid_t_ id;
  comm_t c;
  int fail;
  config_t *cfg;
} thr_job;

static void *thr_main(void *arg) {
  thr_job *j = arg;
  res_t r = j->cfg ? N.CommInitRankConfig(&j->c, j->n, j->id, j->rank, j->cfg) : N.CommInitRank(&j->c, j->n, j->id, j->rank);
  if (r) {
    printf("FAIL thread %d init rc=%d %s\n", j->rank, r, N.GetLastError(NULL));
    j->fail = 1;
    return NULL;
  }
  if (j->cfg) {
    res_t ae;
    int64_t t0 = now_ms();
    do {
      N.CommGetAsyncError(j->c, &ae);
      if (ae == 7) msleep(1);
    } while (ae == 7 && now_ms() - t0 < 10000);
    if (ae) {
      printf("FAIL thread %d nonblocking init async=%d %s\n", j->rank, ae, N.GetLastError(j->c));
      j->fail = 1;
      return NULL;
    }
  }
  size_t count = 100003;
  int32_t *buf = malloc(4 * count);
  for (size_t i = 0; i < count; i++) buf[i] = (int32_t)(j->rank + i);
  r = N.AllReduce(buf, buf, count, I32, Sum, j->c, NULL);
  int bad = r != 0;
  for (size_t i = 0; i < count && !bad; i++) bad = buf[i] != (int32_t)(j->n * (j->n - 1) / 2 + j->n * i);
  if (bad) {
    printf("FAIL thread %d allreduce rc=%d %s\n", j->rank, r, N.GetLastError(j->c));
    j->fail = 1;
  }
  free(buf);
  alltoall(j->c, j->rank, j->n, 5000, "thread");
  N.CommDestroy(j->c);
  return NULL;
}

static void sc_threads(int n, int nonblocking) {
  uid_t_ id;
  N.GetUniqueId(&id);
  thr_job *jobs = calloc(n, sizeof *jobs);
  pthread_t *th = calloc(n, sizeof *th);
  config_t cfg = {sizeof(config_t), 0xcafebeef, 21903, 0, 0, 0, 0, NULL, 0};
  for (int i = 0; i < n; i++) {
    jobs[i] = (thr_job){i, n, id, NULL, 0, nonblocking ? &cfg : NULL};
    pthread_create(&th[i], NULL, thr_main, &jobs[i]);
  }
  int fail = 0;
  for (int i = 0; i < n; i++) {
    pthread_join(th[i], NULL);
    fail |= jobs[i].fail;
  }
  report(nonblocking ? "threads nonblocking" : "threads", !fail, "a thread failed", NULL, 0);
  free(jobs);
  free(th);
}

static void sc_initall(int n) {
  comm_t *cs = calloc(n, sizeof *cs);
  int *devs = calloc(n, sizeof *devs);
  for (int i = 0; i < n; i++) devs[i] = 10 + i;
  if (!call_ok("initall", N.CommInitAll(cs, n, devs), NULL)) return;
  int ok = 1;
  for (int i = 0; i < n; i++) {
    int r, cnt, d;
    N.CommUserRank(cs[i], &r);
    N.CommCount(cs[i], &cnt);
    N.CommCuDevice(cs[i], &d);
    ok &= r == i && cnt == n && d == 10 + i;
  }
  report("initall ranks/devices", ok, "wrong rank/count/device", NULL, 0);
  /* One thread drives all communicators inside a group. */
  size_t count = 300001;
  double **bufs = calloc(n, sizeof *bufs);
  for (int i = 0; i < n; i++) {
    bufs[i] = malloc(8 * count);
    for (size_t j = 0; j < count; j++) bufs[i][j] = val(F64, Max, i, j);
  }
  N.GroupStart();
  for (int i = 0; i < n; i++) N.AllReduce(bufs[i], bufs[i], count, F64, Max, cs[i], NULL);
  res_t r = N.GroupEnd();
  if (call_ok("initall group allreduce", r, NULL)) {
    for (int i = 0; i < n; i++) VERIFY("initall group allreduce", F64, bufs[i], count, expect_red(F64, Max, n, j), bufs[i], 8 * count);
  }
  for (int i = 0; i < n; i++) {
    N.CommDestroy(cs[i]);
    free(bufs[i]);
  }
  free(bufs);
  free(cs);
  free(devs);
}

/* --------------------------------------------------------------- main --- */

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: driver LIB SCENARIO RANK NRANKS IDHEX [ARGS...]\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  load(argv[1]);
  const char *sc = argv[2];
  g_rank = atoi(argv[3]);
  g_n = atoi(argv[4]);
  if (!strcmp(sc, "threads")) {
    sc_threads(g_n, 0);
    return 0;
  }
  if (!strcmp(sc, "nonblocking")) {
    sc_threads(g_n, 1);
    return 0;
  }
  if (!strcmp(sc, "initall")) {
    sc_initall(g_n);
    return 0;
  }
  uid_t_ id;
  if (!strcmp(argv[5], "-")) {
    if (N.GetUniqueId(&id)) die("ncclGetUniqueId failed: %s", N.GetLastError(NULL));
    char hex[257];
    id2hex(&id, hex);
    printf("ID %s\n", hex);
    fflush(stdout);
  } else {
    hex2id(argv[5], &id);
  }
  comm_t c = NULL;
  int64_t t0 = now_ms();
  res_t r = N.CommInitRank(&c, g_n, id, g_rank);
  if (!strcmp(sc, "initonly")) {
    print_err("init", r, t0, NULL);
    return 0;
  }
  if (r) {
    printf("FAIL init rc=%d %s\n", r, N.GetLastError(NULL));
    return 1;
  }
  int gone = 0;
  if (!strcmp(sc, "matrix")) sc_matrix(c, argc - 6, argv + 6);
  else if (!strcmp(sc, "p2p")) sc_p2p(c, argc - 6, argv + 6);
  else if (!strcmp(sc, "exitearly")) sc_exitearly(c, 0);
  else if (!strcmp(sc, "hang")) sc_exitearly(c, 1);
  else if (!strcmp(sc, "abort")) gone = sc_abort(c);
  else if (!strcmp(sc, "mismatch")) sc_mismatch(c);
  else if (!strcmp(sc, "args")) sc_args(c);
  else die("unknown scenario %s", sc);
  if (!gone) N.CommDestroy(c);
  printf("DONE fail=%d\n", g_fail);
  return g_fail;
}
