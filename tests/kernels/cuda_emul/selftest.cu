// Kernels that test the emulator itself (tests/kernels/test_cuda_emul.py), with their ctypes glue.
// Written as CUDA C, like the project's kernels; only rf_t_reverse's optional sleep and the glue
// are emulator-only.

// ---------------------------------------------------------------- block sum over grid-stride rows
// y[n] = Σ_j x[n, j]: threads stride over the row, warps reduce by shuffles, warp totals meet in
// shared memory, warp 0 reduces them. owner[n] records the block that did row n.
template <typename T>
__global__ void rf_t_rowsum(const T *__restrict__ x, T *__restrict__ y, int *__restrict__ owner, long long N,
                            long long M) {
    __shared__ double part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    for (long long n = blockIdx.x; n < N; n += gridDim.x) {
        double v = 0.0;
        for (long long j = threadIdx.x; j < M; j += blockDim.x) v += (double)x[n * M + j];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) part[warp] = v;
        __syncthreads();
        if (warp == 0) {
            v = lane < nwarps ? part[lane] : 0.0;
            for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
            if (lane == 0) {
                y[n] = (T)v;
                owner[n] = (int)blockIdx.x;
            }
        }
        __syncthreads();  // part[] is rewritten by the next row
    }
}

// ---------------------------------------------------------------- every shuffle flavour
// One block. For each case p: out[p, t] = shuffle kind[p] (0 idx, 1 up, 2 down, 3 xor) of vals[t]
// with lane argument arg[p, t] (may differ per lane) and width[p].
template <typename T>
__global__ void rf_t_shfl(const T *__restrict__ vals, T *__restrict__ out, const int *__restrict__ kind,
                          const int *__restrict__ arg, const int *__restrict__ width, int P) {
    const unsigned t = threadIdx.x;
    const T v = vals[t];
    for (int p = 0; p < P; ++p) {
        const int a = arg[p * blockDim.x + t], w = width[p];
        T r;
        switch (kind[p]) {
        case 0: r = __shfl_sync(0xffffffffu, v, a, w); break;
        case 1: r = __shfl_up_sync(0xffffffffu, v, (unsigned)a, w); break;
        case 2: r = __shfl_down_sync(0xffffffffu, v, (unsigned)a, w); break;
        default: r = __shfl_xor_sync(0xffffffffu, v, a, w); break;
        }
        out[p * blockDim.x + t] = r;
    }
}

// ---------------------------------------------------------------- votes and counting barriers
__global__ void rf_t_votes(const int *__restrict__ pred, unsigned *__restrict__ ballot, int *__restrict__ any,
                           int *__restrict__ all, int *__restrict__ count, int *__restrict__ band,
                           int *__restrict__ bor) {
    const unsigned t = threadIdx.x;
    const int p = pred[t];
    ballot[t] = __ballot_sync(0xffffffffu, p);
    any[t] = __any_sync(0xffffffffu, p);
    all[t] = __all_sync(0xffffffffu, p);
    count[t] = __syncthreads_count(p);
    band[t] = __syncthreads_and(p);
    bor[t] = __syncthreads_or(p);
}

// ---------------------------------------------------------------- __syncthreads ordering
// Reverse each row of blockDim.x values through shared memory. Without the barriers a thread reads
// its partner's slot before the partner wrote it; `slow_ms` delays the upper half's writes so that
// this happens every time (the test shows the answer is then wrong, and right with the barriers).
__global__ void rf_t_reverse(const double *__restrict__ x, double *__restrict__ y, long long rows, int use_barrier,
                             int slow_ms) {
    __shared__ double s[1024];
    const unsigned t = threadIdx.x, B = blockDim.x;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        if (slow_ms && t >= B / 2) std::this_thread::sleep_for(std::chrono::milliseconds(slow_ms));
        s[t] = x[r * B + t];
        if (use_barrier) __syncthreads();
        y[r * B + t] = s[B - 1 - t];
        if (use_barrier) __syncthreads();  // the next row's writes wait for this row's reads
    }
}

// ---------------------------------------------------------------- 16-byte vector loads and stores
// y = a·x, 16 bytes per access; the components are written back in reverse order within each
// vector so that a wrong member layout shows.
__global__ void rf_t_vec_f32(const float *__restrict__ x, float *__restrict__ y, long long n4, float a) {
    const float4 *p = reinterpret_cast<const float4 *>(x);
    float4 *q = reinterpret_cast<float4 *>(y);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < n4; j += stride) {
        const float4 v = __ldg(p + j);
        __stcs(q + j, make_float4(__fmul_rn(v.w, a), __fmul_rn(v.z, a), __fmul_rn(v.y, a), __fmul_rn(v.x, a)));
    }
}

__global__ void rf_t_vec_f64(const double *__restrict__ x, double *__restrict__ y, long long n2, double a) {
    const double2 *p = reinterpret_cast<const double2 *>(x);
    double2 *q = reinterpret_cast<double2 *>(y);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < n2; j += stride) {
        const double2 v = __ldcs(p + j);
        __stcg(q + j, make_double2(__dmul_rn(v.y, a), __dmul_rn(v.x, a)));
    }
}

// ---------------------------------------------------------------- arithmetic and atomics
// out = [a·b + c as written, __fma_rn(a, b, c), __fmaf_rn in float, a·b + c in float]
__global__ void rf_t_arith(const double *__restrict__ in, double *__restrict__ out) {
    const double a = in[0], b = in[1], c = in[2];
    const float af = (float)in[3], bf = (float)in[4], cf = (float)in[5];
    out[0] = a * b + c;
    out[1] = __fma_rn(a, b, c);
    out[2] = (double)__fmaf_rn(af, bf, cf);
    out[3] = (double)(af * bf + cf);
}

// Each thread adds 1 to acc_d and 0.5 to acc_f `reps` times; old[g] is what its first add saw.
__global__ void rf_t_atomics(double *__restrict__ acc_d, float *__restrict__ acc_f, double *__restrict__ old,
                             int reps) {
    const long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    old[g] = atomicAdd(acc_d, 1.0);
    atomicAdd(acc_f, 0.5f);
    __syncthreads();  // the block's threads start the loop together: they really contend
    for (int r = 1; r < reps; ++r) {
        atomicAdd(acc_d, 1.0);
        atomicAdd(acc_f, 0.5f);
    }
}

// ---------------------------------------------------------------- kernels the emulator must reject
__global__ void rf_t_faulty(int mode, double *__restrict__ out) {
    const unsigned t = threadIdx.x, lane = t & 31;
    switch (mode) {
    case 0:  // half a warp shuffles while the other half waits at __syncthreads: a deadlock
        if (lane < 16) out[t] = __shfl_down_sync(0xffffffffu, 1.0, 1);
        else __syncthreads();
        break;
    case 1:  // a device assert fails in one thread while the others wait at a barrier
        assert(t != 37);
        __syncthreads();
        break;
    case 2:  // one thread returns while the rest of the block waits for it at __syncthreads
        if (t == 5) return;
        __syncthreads();
        break;
    case 3:  // a partial mask
        out[t] = __shfl_down_sync(0x0000ffffu, 1.0, 1);
        break;
    case 4:  // different warp operations meet at one barrier
        if (lane < 16) __syncwarp();
        else out[t] = __shfl_xor_sync(0xffffffffu, 1.0, 1);
        break;
    case 5:  // a shuffle only half of the warp takes part in
        if (lane < 16) out[t] = __shfl_xor_sync(0xffffffffu, 1.0, 1);
        break;
    case 7:  // as 2, but thread 5 surely returns after the others reached the barrier
        if (t == 5) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            return;
        }
        __syncthreads();
        break;
    case 6:  // legal: warp 1 leaves at once, warp 0 shuffles and syncs among itself; block-uniform exit
        if (blockIdx.x == 1) return;
        if (t >= 32) return;
        out[t] = __shfl_xor_sync(0xffffffffu, (double)t, 1);
        __syncwarp();
        break;
    }
}

// ---------------------------------------------------------------- glue
template <class K, class... A> static int rf_t_run(K k, unsigned grid, unsigned block, A... args) {
    return rf_emul::guarded([&] { rf_emul::launch(k, grid, block, args...); });
}

extern "C" {
int rf_t_rowsum_f64(unsigned g, unsigned b, const double *x, double *y, int *o, long long N, long long M) {
    return rf_t_run(rf_t_rowsum<double>, g, b, x, y, o, N, M);
}
int rf_t_rowsum_f32(unsigned g, unsigned b, const float *x, float *y, int *o, long long N, long long M) {
    return rf_t_run(rf_t_rowsum<float>, g, b, x, y, o, N, M);
}
#define RF_T_SHFL(S, T)                                                                            \
    int rf_t_shfl_##S(unsigned b, const T *v, T *o, const int *k, const int *a, const int *w, int P) { \
        return rf_t_run(rf_t_shfl<T>, 1, b, v, o, k, a, w, P);                                     \
    }
RF_T_SHFL(f32, float)
RF_T_SHFL(f64, double)
RF_T_SHFL(i32, int)
RF_T_SHFL(u32, unsigned int)
RF_T_SHFL(i64, long long)
RF_T_SHFL(u64, unsigned long long)
int rf_t_votes_run(unsigned b, const int *p, unsigned *ba, int *an, int *al, int *c, int *bd, int *bo) {
    return rf_t_run(rf_t_votes, 1, b, p, ba, an, al, c, bd, bo);
}
int rf_t_reverse_run(unsigned g, unsigned b, const double *x, double *y, long long rows, int use_barrier, int slow_ms) {
    return rf_t_run(rf_t_reverse, g, b, x, y, rows, use_barrier, slow_ms);
}
int rf_t_vec_f32_run(unsigned g, unsigned b, const float *x, float *y, long long n4, float a) {
    return rf_t_run(rf_t_vec_f32, g, b, x, y, n4, a);
}
int rf_t_vec_f64_run(unsigned g, unsigned b, const double *x, double *y, long long n2, double a) {
    return rf_t_run(rf_t_vec_f64, g, b, x, y, n2, a);
}
int rf_t_arith_run(const double *in, double *out) { return rf_t_run(rf_t_arith, 1, 32, in, out); }
int rf_t_atomics_run(unsigned g, unsigned b, double *ad, float *af, double *old, int reps) {
    return rf_t_run(rf_t_atomics, g, b, ad, af, old, reps);
}
int rf_t_faulty_run(unsigned g, unsigned b, int mode, double *out) { return rf_t_run(rf_t_faulty, g, b, mode, out); }
int rf_t_builtin_outside_kernel(void) {
    return rf_emul::guarded([] { __syncthreads(); });
}
// sizeof and alignof of the vector types, in pairs: float2 float4 double2 double4 int2 int4 uint2 uint4
void rf_t_layout(long long *o) {
    long long v[] = {sizeof(float2), alignof(float2), sizeof(float4),  alignof(float4),
                     sizeof(double2), alignof(double2), sizeof(double4), alignof(double4),
                     sizeof(int2), alignof(int2), sizeof(int4), alignof(int4),
                     sizeof(uint2), alignof(uint2), sizeof(uint4), alignof(uint4)};
    for (unsigned i = 0; i < sizeof v / sizeof v[0]; ++i) o[i] = v[i];
}
}
