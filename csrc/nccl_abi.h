/*
 * nccl_abi.h: the parts of NCCL's public ABI (nccl.h) that gotrain uses,
 * declared here so that building needs no NCCL headers, plus a per-library
 * dlopen/dlsym symbol table and one-line trampolines that call through it.
 *
 * Go never handles C function pointers: it calls the nccl_* trampolines
 * below, passing the nccl_lib* that Load filled in. Device pointers and
 * streams cross as uintptr_t and are cast back here, so Go's vet and cgo
 * pointer checks never see them.
 *
 * Values and layouts follow NCCL's published nccl.h; ncclConfig_t is the
 * NCCL 2.17 layout (fields are only ever appended; the struct carries its
 * own size and version, so older 2.14+ libraries read the prefix they know).
 */
#ifndef GOTRAIN_NCCL_ABI_H
#define GOTRAIN_NCCL_ABI_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr */
#endif

#include <dlfcn.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- types from nccl.h ---- */

typedef struct ncclComm* ncclComm_t;

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct { char internal[NCCL_UNIQUE_ID_BYTES]; } ncclUniqueId;

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

typedef enum {
  ncclSum = 0,
  ncclProd = 1,
  ncclMax = 2,
  ncclMin = 3,
  ncclAvg = 4
} ncclRedOp_t;

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
  ncclBfloat16 = 9
} ncclDataType_t;

#define NCCL_CONFIG_UNDEF_INT INT_MIN
#define NCCL_CONFIG_UNDEF_PTR NULL
#define NCCL_CONFIG_MAGIC 0xcafebeefu
#define GOTRAIN_NCCL_VERSION(X, Y, Z) (((X) <= 2 && (Y) <= 8) ? (X) * 1000 + (Y) * 100 + (Z) : (X) * 10000 + (Y) * 100 + (Z))
/* The layout declared here is NCCL 2.17's. */
#define GOTRAIN_NCCL_CONFIG_VERSION GOTRAIN_NCCL_VERSION(2, 17, 0)

typedef struct ncclConfig_v21700 {
  size_t size;          /* sizeof(ncclConfig_t) */
  unsigned int magic;   /* NCCL_CONFIG_MAGIC */
  unsigned int version; /* the layout's NCCL version code */
  int blocking;
  int cgaClusterSize;
  int minCTAs;
  int maxCTAs;
  const char* netName;
  int splitShare;
} ncclConfig_t;

typedef void* cudaStream_t;

/* ---- function pointer types ---- */

typedef ncclResult_t (*ncclGetVersion_fn)(int* version);
typedef ncclResult_t (*ncclGetUniqueId_fn)(ncclUniqueId* uniqueId);
typedef ncclResult_t (*ncclCommInitRank_fn)(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank);
typedef ncclResult_t (*ncclCommInitRankConfig_fn)(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank, ncclConfig_t* config);
typedef ncclResult_t (*ncclCommInitAll_fn)(ncclComm_t* comms, int ndev, const int* devlist);
typedef ncclResult_t (*ncclCommFinalize_fn)(ncclComm_t comm);
typedef ncclResult_t (*ncclCommDestroy_fn)(ncclComm_t comm);
typedef ncclResult_t (*ncclCommAbort_fn)(ncclComm_t comm);
typedef const char* (*ncclGetErrorString_fn)(ncclResult_t result);
typedef const char* (*ncclGetLastError_fn)(ncclComm_t comm);
typedef ncclResult_t (*ncclCommGetAsyncError_fn)(ncclComm_t comm, ncclResult_t* asyncError);
typedef ncclResult_t (*ncclCommCount_fn)(const ncclComm_t comm, int* count);
typedef ncclResult_t (*ncclCommCuDevice_fn)(const ncclComm_t comm, int* device);
typedef ncclResult_t (*ncclCommUserRank_fn)(const ncclComm_t comm, int* rank);
typedef ncclResult_t (*ncclAllReduce_fn)(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
typedef ncclResult_t (*ncclBroadcast_fn)(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm, cudaStream_t stream);
typedef ncclResult_t (*ncclReduce_fn)(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream);
typedef ncclResult_t (*ncclAllGather_fn)(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream);
typedef ncclResult_t (*ncclReduceScatter_fn)(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
typedef ncclResult_t (*ncclSend_fn)(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm, cudaStream_t stream);
typedef ncclResult_t (*ncclRecv_fn)(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm, cudaStream_t stream);
typedef ncclResult_t (*ncclGroupStart_fn)(void);
typedef ncclResult_t (*ncclGroupEnd_fn)(void);

/* ---- the symbol table ---- */

/* X(name): every symbol the table resolves, in table order. */
#define GOTRAIN_NCCL_SYMBOLS(X) \
  X(ncclGetVersion)                \
  X(ncclGetUniqueId)               \
  X(ncclCommInitRank)              \
  X(ncclCommInitRankConfig)        \
  X(ncclCommInitAll)               \
  X(ncclCommFinalize)              \
  X(ncclCommDestroy)               \
  X(ncclCommAbort)                 \
  X(ncclGetErrorString)            \
  X(ncclGetLastError)              \
  X(ncclCommGetAsyncError)         \
  X(ncclCommCount)                 \
  X(ncclCommCuDevice)              \
  X(ncclCommUserRank)              \
  X(ncclAllReduce)                 \
  X(ncclBroadcast)                 \
  X(ncclReduce)                    \
  X(ncclAllGather)                 \
  X(ncclReduceScatter)             \
  X(ncclSend)                      \
  X(ncclRecv)                      \
  X(ncclGroupStart)                \
  X(ncclGroupEnd)

#define GOTRAIN_NCCL_SYM_ENUM(n) NCCL_SYM_##n,
enum { GOTRAIN_NCCL_SYMBOLS(GOTRAIN_NCCL_SYM_ENUM) NCCL_SYM_COUNT };
#undef GOTRAIN_NCCL_SYM_ENUM

typedef struct nccl_lib {
  void* handle;               /* from dlopen; never closed */
  void* fn[NCCL_SYM_COUNT];   /* NULL where the library lacks the symbol */
} nccl_lib;

static inline const char* nccl_sym_name(int i) {
#define GOTRAIN_NCCL_SYM_NAME(n) #n,
  static const char* const names[] = { GOTRAIN_NCCL_SYMBOLS(GOTRAIN_NCCL_SYM_NAME) NULL };
#undef GOTRAIN_NCCL_SYM_NAME
  return (i >= 0 && i < NCCL_SYM_COUNT) ? names[i] : NULL;
}

/* nccl_lib_open dlopens path and resolves every symbol. It returns a
 * malloc'd table, or NULL with dlerror's text copied into err. */
static inline nccl_lib* nccl_lib_open(const char* path, char* err, size_t errlen) {
  dlerror();
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    const char* e = dlerror();
    if (errlen > 0) {
      strncpy(err, e ? e : "dlopen failed", errlen - 1);
      err[errlen - 1] = 0;
    }
    return NULL;
  }
  nccl_lib* L = (nccl_lib*)calloc(1, sizeof(nccl_lib));
  if (L == NULL) {
    if (errlen > 0) { strncpy(err, "out of memory", errlen - 1); err[errlen - 1] = 0; }
    return NULL;
  }
  L->handle = h;
  for (int i = 0; i < NCCL_SYM_COUNT; i++) L->fn[i] = dlsym(h, nccl_sym_name(i));
  return L;
}

/* nccl_lib_path reports the file the library was loaded from (via one of its
 * symbols), or NULL. */
static inline const char* nccl_lib_path(const nccl_lib* L) {
  Dl_info info;
  if (L->fn[NCCL_SYM_ncclGetVersion] && dladdr(L->fn[NCCL_SYM_ncclGetVersion], &info) && info.dli_fname) return info.dli_fname;
  return NULL;
}

static inline int nccl_has(const nccl_lib* L, int i) { return i >= 0 && i < NCCL_SYM_COUNT && L->fn[i] != NULL; }

/* ---- trampolines: the caller checks nccl_has first ---- */

#define GOTRAIN_FN(L, n) ((n##_fn)(L)->fn[NCCL_SYM_##n])
#define GOTRAIN_PTR(p) ((void*)(uintptr_t)(p))

static inline int nccl_GetVersion(nccl_lib* L, int* v) { return GOTRAIN_FN(L, ncclGetVersion)(v); }
static inline int nccl_GetUniqueId(nccl_lib* L, ncclUniqueId* id) { return GOTRAIN_FN(L, ncclGetUniqueId)(id); }
static inline int nccl_CommInitRank(nccl_lib* L, ncclComm_t* c, int nranks, ncclUniqueId id, int rank) { return GOTRAIN_FN(L, ncclCommInitRank)(c, nranks, id, rank); }
static inline int nccl_CommInitRankConfig(nccl_lib* L, ncclComm_t* c, int nranks, ncclUniqueId id, int rank, ncclConfig_t* cfg) { return GOTRAIN_FN(L, ncclCommInitRankConfig)(c, nranks, id, rank, cfg); }
static inline int nccl_CommInitAll(nccl_lib* L, ncclComm_t* comms, int ndev, const int* devlist) { return GOTRAIN_FN(L, ncclCommInitAll)(comms, ndev, devlist); }
static inline int nccl_CommFinalize(nccl_lib* L, ncclComm_t c) { return GOTRAIN_FN(L, ncclCommFinalize)(c); }
static inline int nccl_CommDestroy(nccl_lib* L, ncclComm_t c) { return GOTRAIN_FN(L, ncclCommDestroy)(c); }
static inline int nccl_CommAbort(nccl_lib* L, ncclComm_t c) { return GOTRAIN_FN(L, ncclCommAbort)(c); }
static inline const char* nccl_GetErrorString(nccl_lib* L, int r) { return GOTRAIN_FN(L, ncclGetErrorString)((ncclResult_t)r); }
static inline const char* nccl_GetLastError(nccl_lib* L, ncclComm_t c) { return GOTRAIN_FN(L, ncclGetLastError)(c); }
static inline int nccl_CommGetAsyncError(nccl_lib* L, ncclComm_t c, int* async) { ncclResult_t a = ncclSuccess; int r = GOTRAIN_FN(L, ncclCommGetAsyncError)(c, &a); *async = (int)a; return r; }
static inline int nccl_CommCount(nccl_lib* L, ncclComm_t c, int* n) { return GOTRAIN_FN(L, ncclCommCount)(c, n); }
static inline int nccl_CommCuDevice(nccl_lib* L, ncclComm_t c, int* d) { return GOTRAIN_FN(L, ncclCommCuDevice)(c, d); }
static inline int nccl_CommUserRank(nccl_lib* L, ncclComm_t c, int* r) { return GOTRAIN_FN(L, ncclCommUserRank)(c, r); }
static inline int nccl_AllReduce(nccl_lib* L, uintptr_t s, uintptr_t r, size_t n, int dt, int op, ncclComm_t c, uintptr_t st) { return GOTRAIN_FN(L, ncclAllReduce)((const void*)GOTRAIN_PTR(s), GOTRAIN_PTR(r), n, (ncclDataType_t)dt, (ncclRedOp_t)op, c, (cudaStream_t)GOTRAIN_PTR(st)); }
static inline int nccl_Broadcast(nccl_lib* L, uintptr_t s, uintptr_t r, size_t n, int dt, int root, ncclComm_t c, uintptr_t st) { return GOTRAIN_FN(L, ncclBroadcast)((const void*)GOTRAIN_PTR(s), GOTRAIN_PTR(r), n, (ncclDataType_t)dt, root, c, (cudaStream_t)GOTRAIN_PTR(st)); }
static inline int nccl_Reduce(nccl_lib* L, uintptr_t s, uintptr_t r, size_t n, int dt, int op, int root, ncclComm_t c, uintptr_t st) { return GOTRAIN_FN(L, ncclReduce)((const void*)GOTRAIN_PTR(s), GOTRAIN_PTR(r), n, (ncclDataType_t)dt, (ncclRedOp_t)op, root, c, (cudaStream_t)GOTRAIN_PTR(st)); }
static inline int nccl_AllGather(nccl_lib* L, uintptr_t s, uintptr_t r, size_t n, int dt, ncclComm_t c, uintptr_t st) { return GOTRAIN_FN(L, ncclAllGather)((const void*)GOTRAIN_PTR(s), GOTRAIN_PTR(r), n, (ncclDataType_t)dt, c, (cudaStream_t)GOTRAIN_PTR(st)); }
static inline int nccl_ReduceScatter(nccl_lib* L, uintptr_t s, uintptr_t r, size_t n, int dt, int op, ncclComm_t c, uintptr_t st) { return GOTRAIN_FN(L, ncclReduceScatter)((const void*)GOTRAIN_PTR(s), GOTRAIN_PTR(r), n, (ncclDataType_t)dt, (ncclRedOp_t)op, c, (cudaStream_t)GOTRAIN_PTR(st)); }
static inline int nccl_Send(nccl_lib* L, uintptr_t b, size_t n, int dt, int peer, ncclComm_t c, uintptr_t st) { return GOTRAIN_FN(L, ncclSend)((const void*)GOTRAIN_PTR(b), n, (ncclDataType_t)dt, peer, c, (cudaStream_t)GOTRAIN_PTR(st)); }
static inline int nccl_Recv(nccl_lib* L, uintptr_t b, size_t n, int dt, int peer, ncclComm_t c, uintptr_t st) { return GOTRAIN_FN(L, ncclRecv)(GOTRAIN_PTR(b), n, (ncclDataType_t)dt, peer, c, (cudaStream_t)GOTRAIN_PTR(st)); }
static inline int nccl_GroupStart(nccl_lib* L) { return GOTRAIN_FN(L, ncclGroupStart)(); }
static inline int nccl_GroupEnd(nccl_lib* L) { return GOTRAIN_FN(L, ncclGroupEnd)(); }

/* nccl_config_init fills cfg like NCCL_CONFIG_INITIALIZER. */
static inline void nccl_config_init(ncclConfig_t* cfg) {
  cfg->size = sizeof(ncclConfig_t);
  cfg->magic = NCCL_CONFIG_MAGIC;
  cfg->version = GOTRAIN_NCCL_CONFIG_VERSION;
  cfg->blocking = NCCL_CONFIG_UNDEF_INT;
  cfg->cgaClusterSize = NCCL_CONFIG_UNDEF_INT;
  cfg->minCTAs = NCCL_CONFIG_UNDEF_INT;
  cfg->maxCTAs = NCCL_CONFIG_UNDEF_INT;
  cfg->netName = NCCL_CONFIG_UNDEF_PTR;
  cfg->splitShare = NCCL_CONFIG_UNDEF_INT;
}

#undef GOTRAIN_PTR
#undef GOTRAIN_FN
#endif /* GOTRAIN_NCCL_ABI_H */
