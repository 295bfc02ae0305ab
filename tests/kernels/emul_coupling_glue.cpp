// C entry points that run kernels/cuda_c_coupling.cu on the CPU emulator (tests only; see
// tests/kernels/test_kernels_cuda_c.py and tests/kernels/cuda_emul/build.py, which force-includes cuda_emul.h).
// Each returns 0, or 1 if the launch failed (message: rf_emul_last_error()).
#include "cuda_c_coupling.cu"

#define RF_ROWS(SUFFIX, T)                                                                                \
    extern "C" int rf_affine_rows_##SUFFIX(unsigned grid, unsigned block, const T *x, const T *h, T *out,  \
                                           T *logdet, long long N, long long M, int kind, T c, int inverse, \
                                           int vec) {                                                      \
        return rf_emul::guarded([&] {                                                                     \
            rf_emul::launch(rf_affine_rows<T>, grid, block, x, h, out, logdet, N, M, kind, c, inverse, vec); \
        });                                                                                               \
    }                                                                                                     \
    extern "C" int rf_affine_rows_vjp_##SUFFIX(unsigned grid, unsigned block, const T *x, const T *h,      \
                                               const T *g, const T *gl, T *gout, T *gh, long long N,       \
                                               long long M, int kind, T c, int inverse, int vec) {         \
        return rf_emul::guarded([&] {                                                                     \
            rf_emul::launch(rf_affine_rows_vjp<T>, grid, block, x, h, g, gl, gout, gh, N, M, kind, c,      \
                            inverse, vec);                                                                \
        });                                                                                               \
    }

RF_ROWS(f32, float)
RF_ROWS(f64, double)
