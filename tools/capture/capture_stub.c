/* Launch capture for varblock's build: a stand-in for the CUDA wrappers of libcute_dsl_runtime.so.
 * The CuTe DSL's JIT-compiled host code links against these symbols when CUTE_DSL_LIBS points here, so it runs
 * on a CPU-only machine. Nothing is launched: the last kernel launch (config, attributes, parameter bytes) and
 * the function attributes set at load are recorded for build_kernels.py to compare with varblock's packer. */
#include <stdint.h>
#include <string.h>

typedef struct { uint32_t grid[3]; uint32_t block[3]; uint64_t smem; void *stream; void *attrs; uint32_t nattrs; } vb_cfg;
typedef struct { int32_t id; char pad[4]; unsigned char val[64]; } vb_attr;

enum { MAX_PARAMS = 128, MAX_PARAM_BYTES = 256, MAX_ATTRS = 32, MAX_SETATTR = 64 };

static int n_sizes;
static int sizes[MAX_PARAMS];
static unsigned char params[MAX_PARAMS][MAX_PARAM_BYTES];
static vb_cfg last_cfg;
static vb_attr last_attrs[MAX_ATTRS];
static int n_launches;
static int setattr_log[MAX_SETATTR][2];
static int n_setattr;
static int smem_optin = 232448;

/* TMA descriptors. The DSL's own TMA atoms (make_tiled_tma_atom) bit-pack the descriptor inline in the host code,
 * so it simply arrives as a 128-byte kernel parameter. Host code that asks the runtime library to encode one
 * (cutlass.experimental TensorMap) calls _cuTensorMapEncodeTiled: there is no encoder on a CPU, so the stub records
 * the arguments and writes a marker descriptor {"VBTMSTUB", u32 index, zeros} that build_kernels.py resolves. */
enum { MAX_TMAPS = 32, MAX_RANK = 5 };
typedef struct {
  int32_t dtype; uint32_t rank; uint64_t addr; uint64_t dims[MAX_RANK]; uint64_t strides[MAX_RANK];
  uint32_t box[MAX_RANK]; uint32_t estr[MAX_RANK]; int32_t interleave, swizzle, l2, oob;
} vb_tmap;
static vb_tmap tmaps[MAX_TMAPS];
static int n_tmaps;
static int n_failed_asserts;

/* ---- control and readout (called from Python through ctypes) ---- */
void vbcap_reset(void) {
  n_launches = 0; n_setattr = 0; n_tmaps = 0; n_failed_asserts = 0; memset(&last_cfg, 0, sizeof last_cfg);
}
int vbcap_failed_asserts(void) { return n_failed_asserts; }
int vbcap_num_tensormaps(void) { return n_tmaps; }
const vb_tmap *vbcap_tensormap(int i) { return &tmaps[i]; }
void vbcap_set_param_sizes(int n, const int *s) {
  n_sizes = n < MAX_PARAMS ? n : MAX_PARAMS;
  for (int i = 0; i < n_sizes; ++i) sizes[i] = s[i] < MAX_PARAM_BYTES ? s[i] : MAX_PARAM_BYTES;
}
void vbcap_set_smem_optin(int v) { smem_optin = v; }
int vbcap_launches(void) { return n_launches; }
const vb_cfg *vbcap_config(void) { return &last_cfg; }
const vb_attr *vbcap_attrs(void) { return last_attrs; }
const unsigned char *vbcap_param(int i) { return params[i]; }
int vbcap_num_setattr(void) { return n_setattr; }
const int *vbcap_setattr(int i) { return setattr_log[i]; }

static void record_params(void **args) {
  for (int i = 0; i < n_sizes; ++i) memcpy(params[i], args[i], (size_t)sizes[i]);
  n_launches++;
}
static void record_setattr(int attr, int value) {
  if (n_setattr < MAX_SETATTR) { setattr_log[n_setattr][0] = attr; setattr_log[n_setattr][1] = value; n_setattr++; }
}

/* ---- the runtime symbols the DSL host code imports ---- */
int _cudaLaunchKernelEx(const vb_cfg *cfg, void *kernel, void **args) {
  (void)kernel;
  last_cfg = *cfg;
  uint32_t n = cfg->nattrs < MAX_ATTRS ? cfg->nattrs : MAX_ATTRS;
  memcpy(last_attrs, cfg->attrs, n * sizeof(vb_attr));
  last_cfg.nattrs = n;
  record_params(args);
  return 0;
}
int _cudaLaunchKernel(void *f, int gx, int gy, int gz, int bx, int by, int bz, void **args, int64_t smem, void *stream) {
  (void)f; (void)stream;
  memset(&last_cfg, 0, sizeof last_cfg);
  last_cfg.grid[0] = gx; last_cfg.grid[1] = gy; last_cfg.grid[2] = gz;
  last_cfg.block[0] = bx; last_cfg.block[1] = by; last_cfg.block[2] = bz;
  last_cfg.smem = (uint64_t)smem;
  record_params(args);
  return 0;
}
int _cudaLibraryLoadData(void **lib, const void *c, void *a, void *b, int n, void *d, void *e, int f) { *lib = (void *)0x1000; return 0; }
int _cudaLibraryGetKernel(void **k, void *lib, const char *name) { *k = (void *)0x2000; return 0; }
int _cuLibraryLoadData(void **lib, const void *c, void *a, void *b, unsigned n, void *d, void *e, unsigned f) { *lib = (void *)0x1000; return 0; }
int _cuLibraryGetKernel(void **k, void *lib, const char *name) { *k = (void *)0x2000; return 0; }
int _cuKernelGetAttribute(int *v, int attr, void *k, int dev) { *v = 0; return 0; }
int _cudaDeviceGetAttribute(int *v, int attr, int dev) { *v = (attr == 97) ? smem_optin : 0; return 0; }
int _cudaGetDevice(int *d) { *d = 0; return 0; }
int _cudaGetDeviceCount(int *d) { *d = 1; return 0; }
int _cudaKernelSetAttributeForDevice(void *k, int a, int v, int dev) { record_setattr(a, v); return 0; }
int _cudaFuncSetAttribute(void *k, int a, int v) { record_setattr(a, v); return 0; }
int _cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, void *f, int bs, int64_t smem) { *n = 1; return 0; }
int _cudaLibraryUnload(void *lib) { return 0; }
int _cuTensorMapEncodeTiled(void *out, int dtype, uint32_t rank, void *addr, const uint64_t *dims,
                            const uint64_t *strides, const uint32_t *box, const uint32_t *estr, int interleave,
                            int swizzle, int l2, int oob) {
  if (n_tmaps >= MAX_TMAPS || rank < 1 || rank > MAX_RANK) return 1; /* CUDA_ERROR_INVALID_VALUE */
  vb_tmap *t = &tmaps[n_tmaps];
  memset(t, 0, sizeof *t);
  t->dtype = dtype; t->rank = rank; t->addr = (uint64_t)(uintptr_t)addr;
  for (uint32_t i = 0; i < rank; ++i) {
    t->dims[i] = dims[i]; t->box[i] = box[i]; t->estr[i] = estr[i];
    if (i + 1 < rank) t->strides[i] = strides[i];
  }
  t->interleave = interleave; t->swizzle = swizzle; t->l2 = l2; t->oob = oob;
  memset(out, 0, 128);
  memcpy(out, "VBTMSTUB", 8);
  memcpy((char *)out + 8, &n_tmaps, 4);
  n_tmaps++;
  return 0;
}
/* the host code checks each runtime call's result with this; a failure is counted (the real one aborts) */
void cuda_dialect_assert_success(int32_t result) { if (result != 0) n_failed_asserts++; }
int _cuLibraryUnload(void *lib) { return 0; }
