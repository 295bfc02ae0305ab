// rawflow.kernels.cuda_c_coupling: fused affine-coupling kernels in CUDA C, compiled by NVRTC
// through CuPy's RawModule (see cuda_c_coupling.py for the maths, the contract and the launch).
//
// Rows n of x (N, M) and h = [h_s | t] (N, 2M). One block owns a row at a time (grid-stride over
// rows); its threads stride over the row 16 bytes at a time (float4 / double2) when `vec` is set,
// i.e. when M is a multiple of the vector width and every base pointer is 16-byte aligned (the host
// checks), else one element at a time. Scale maps (kind): 0 exp, 1 bounded c·tanh(h/c), 2 sigmoid.
//
//   rf_affine_rows      forward  out = x·s + t,    logdet =  Σ log s
//                       inverse  out = (x − t)/s,  logdet = −Σ log s   (the same rounded sum, negated)
//   rf_affine_rows_vjp  forward  gout = g·s,  gh_s = (g·s·x + gl)·dlog s,    gt = g
//                       inverse  gout = g/s,  gh_s = (−g·x − gl)·dlog s,     gt = −g/s
//
// Exactness choices:
// * products that feed an output are explicit round-to-nearest multiplies (__fmul_rn/__dmul_rn),
//   so NVRTC cannot contract x·s + t into an FMA: every output is rounded exactly as in the CPU
//   kernels and the NumPy reference (the only differences left are the ulp of exp/tanh/log1p);
// * the log-det is a float64 sum: per thread TwoSum-compensated, then a compensated warp-shuffle
//   tree and a compensated tree over the warps' results in shared memory; the total is rounded once
//   to T. The order is fixed for a given block size and path, so results are bitwise reproducible;
// * bounded's dlog s = sech²(h/c) is 4G/(1 + G)², G = e^{−2|h/c|}, once |tanh| ≥ ½, with 1 + G's
//   rounding error corrected: no cancellation of 1 − tanh² near saturation.
//
// No #include: NVRTC compiles this without a host toolchain, and the tests compile the same file
// with g++ against tests/kernels/cuda_emul/cuda_emul.h (blocks' threads as OS threads, real shuffles).
// blockDim.x must be a multiple of 32 (full warps for the shuffles) and at most 1024.

template <typename T> struct rf_vec;
template <> struct rf_vec<float> { typedef float4 type; enum { width = 4 }; };
template <> struct rf_vec<double> { typedef double2 type; enum { width = 2 }; };

// A 16-byte vector and its elements: one vector load, W scalar lanes after unrolling.
template <typename T> union rf_pack {
    typename rf_vec<T>::type v;
    T e[rf_vec<T>::width];
};

__device__ __forceinline__ float rf_exp(float v) { return expf(v); }
__device__ __forceinline__ double rf_exp(double v) { return exp(v); }
__device__ __forceinline__ float rf_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double rf_tanh(double v) { return tanh(v); }
__device__ __forceinline__ float rf_log1p(float v) { return log1pf(v); }
__device__ __forceinline__ double rf_log1p(double v) { return log1p(v); }
__device__ __forceinline__ float rf_abs(float v) { return fabsf(v); }
__device__ __forceinline__ double rf_abs(double v) { return fabs(v); }
__device__ __forceinline__ float rf_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double rf_mul(double a, double b) { return __dmul_rn(a, b); }

// (log s, s, dlog s) of one raw conditioner value hv; the same function in every direction, so
// forward/inverse round trips see the same s and the two log-dets are negations of one sum.
template <typename T>
__device__ __forceinline__ void rf_scale_map(int kind, T c, T hv, T &log_s, T &s, T &dlog) {
    const T one = T(1), two = T(2);
    if (kind == 0) {
        log_s = hv;
        s = rf_exp(hv);
        dlog = one;
    } else if (kind == 1) {
        const T a = hv / c;
        const T th = rf_tanh(a);
        log_s = rf_mul(c, th);
        s = rf_exp(log_s);
        const T g = rf_exp(-(rf_abs(a) + rf_abs(a)));
        const T g1 = one + g;
        const T s0 = rf_mul(T(4), g) / rf_mul(g1, g1);
        dlog = rf_abs(th) < T(0.5) ? one - rf_mul(th, th) : s0 - rf_mul(rf_mul(two, s0), (one - g1) + g) / g1;
    } else {
        const T u = hv + two;
        const T e = rf_exp(-rf_abs(u));  // in (0, 1]: neither softplus branch overflows
        const T sp = rf_log1p(e);
        const T d = one + e;
        if (u >= T(0)) {
            log_s = -sp;
            s = one / d;  // sigmoid(u) directly: exp(log s) without compounding log s's error
            dlog = e / d;
        } else {
            log_s = u - sp;
            s = e / d;
            dlog = one / d;
        }
    }
}

// acc + err += v, err collecting exactly what the addition rounded away (Knuth's TwoSum).
__device__ __forceinline__ void rf_two_sum(double &acc, double &err, double v) {
    const double t = acc + v;
    const double bp = t - acc;
    err += (acc - (t - bp)) + (v - bp);
    acc = t;
}

// (s, c) += (s2, c2) for compensated pairs.
__device__ __forceinline__ void rf_merge(double &s, double &c, double s2, double c2) {
    const double t = s + s2;
    const double bp = t - s;
    c += c2 + ((s - (t - bp)) + (s2 - bp));
    s = t;
}

__device__ __forceinline__ void rf_warp_merge(double &s, double &c) {
    // Lane 0 ends with the warp's pair; lanes whose partner is out of range add themselves, and
    // only lanes that never feed lane 0 do.
    for (int o = 16; o > 0; o >>= 1) {
        const double s2 = __shfl_down_sync(0xffffffffu, s, o);
        const double c2 = __shfl_down_sync(0xffffffffu, c, o);
        rf_merge(s, c, s2, c2);
    }
}

// The block's compensated total of (s, c), valid in thread 0. Ends with a barrier: the shared
// buffers are reused by the block's next row.
__device__ __forceinline__ double rf_block_sum(double s, double c, double *sh_s, double *sh_c) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    rf_warp_merge(s, c);
    if (lane == 0) {
        sh_s[warp] = s;
        sh_c[warp] = c;
    }
    __syncthreads();
    if (warp == 0) {
        s = lane < nwarps ? sh_s[lane] : 0.0;
        c = lane < nwarps ? sh_c[lane] : 0.0;
        rf_warp_merge(s, c);
    }
    __syncthreads();
    return s + c;
}

template <typename T>
__device__ __forceinline__ T rf_direction(int inverse, T xv, T s, T tv) {
    return inverse ? (xv - tv) / s : rf_mul(xv, s) + tv;
}

template <typename T>
__global__ void rf_affine_rows(const T *__restrict__ x, const T *__restrict__ h, T *__restrict__ out,
                               T *__restrict__ logdet, long long N, long long M, int kind, T c, int inverse,
                               int vec) {
    typedef typename rf_vec<T>::type V;
    const int W = rf_vec<T>::width;
    __shared__ double sh_s[32];
    __shared__ double sh_c[32];
    for (long long n = blockIdx.x; n < N; n += gridDim.x) {
        const T *xr = x + n * M;
        const T *hr = h + 2 * n * M;
        const T *tr = hr + M;
        T *orow = out + n * M;
        double acc = 0.0, err = 0.0;
        if (vec) {
            const V *xv = reinterpret_cast<const V *>(xr);
            const V *hv = reinterpret_cast<const V *>(hr);
            const V *tv = reinterpret_cast<const V *>(tr);
            V *ov = reinterpret_cast<V *>(orow);
            for (long long j = threadIdx.x; j < M / W; j += blockDim.x) {
                rf_pack<T> a, b, t, o;
                a.v = __ldg(xv + j);
                b.v = __ldg(hv + j);
                t.v = __ldg(tv + j);
#pragma unroll
                for (int k = 0; k < W; ++k) {
                    T log_s, s, d;
                    rf_scale_map(kind, c, b.e[k], log_s, s, d);
                    o.e[k] = rf_direction(inverse, a.e[k], s, t.e[k]);
                    rf_two_sum(acc, err, (double)log_s);
                }
                ov[j] = o.v;
            }
        } else {
            for (long long j = threadIdx.x; j < M; j += blockDim.x) {
                T log_s, s, d;
                rf_scale_map(kind, c, hr[j], log_s, s, d);
                orow[j] = rf_direction(inverse, xr[j], s, tr[j]);
                rf_two_sum(acc, err, (double)log_s);
            }
        }
        const double total = rf_block_sum(acc, err, sh_s, sh_c);
        if (threadIdx.x == 0) {
            const T ld = (T)total;  // one rounding; the inverse negates the rounded value
            logdet[n] = inverse ? -ld : ld;
        }
    }
}

// One element of the VJP: (gout, gh_s, gt) from x, the raw h_s, the cotangent g and gl.
template <typename T>
__device__ __forceinline__ void rf_vjp1(int kind, T c, int inverse, T xv, T hv, T gv, T gl, T &go, T &ghs, T &gt) {
    T log_s, s, d;
    rf_scale_map(kind, c, hv, log_s, s, d);
    if (inverse) {
        const T gy = gv / s;
        go = gy;
        ghs = rf_mul(-rf_mul(gv, xv) - gl, d);
        gt = -gy;
    } else {
        const T gys = rf_mul(gv, s);
        go = gys;
        ghs = rf_mul(rf_mul(gys, xv) + gl, d);
        gt = gv;
    }
}

template <typename T>
__global__ void rf_affine_rows_vjp(const T *__restrict__ x, const T *__restrict__ h, const T *__restrict__ g,
                                   const T *__restrict__ glogdet, T *__restrict__ gout, T *__restrict__ gh,
                                   long long N, long long M, int kind, T c, int inverse, int vec) {
    typedef typename rf_vec<T>::type V;
    const int W = rf_vec<T>::width;
    for (long long n = blockIdx.x; n < N; n += gridDim.x) {
        const T *xr = x + n * M;
        const T *hr = h + 2 * n * M;
        const T *gr = g + n * M;
        T *gor = gout + n * M;
        T *ghs = gh + 2 * n * M;
        T *ght = ghs + M;
        const T gl = glogdet[n];
        if (vec) {
            const V *xv = reinterpret_cast<const V *>(xr);
            const V *hv = reinterpret_cast<const V *>(hr);
            const V *gv = reinterpret_cast<const V *>(gr);
            V *gov = reinterpret_cast<V *>(gor);
            V *ghsv = reinterpret_cast<V *>(ghs);
            V *ghtv = reinterpret_cast<V *>(ght);
            for (long long j = threadIdx.x; j < M / W; j += blockDim.x) {
                rf_pack<T> a, b, q, o, p, r;
                a.v = __ldg(xv + j);
                b.v = __ldg(hv + j);
                q.v = __ldg(gv + j);
#pragma unroll
                for (int k = 0; k < W; ++k) rf_vjp1(kind, c, inverse, a.e[k], b.e[k], q.e[k], gl, o.e[k], p.e[k], r.e[k]);
                gov[j] = o.v;
                ghsv[j] = p.v;
                ghtv[j] = r.v;
            }
        } else {
            for (long long j = threadIdx.x; j < M; j += blockDim.x)
                rf_vjp1(kind, c, inverse, xr[j], hr[j], gr[j], gl, gor[j], ghs[j], ght[j]);
        }
    }
}
