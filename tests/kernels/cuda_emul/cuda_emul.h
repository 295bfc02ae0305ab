// cuda_emul.h: run CUDA C kernels on the CPU, unchanged, for tests (g++ >= 12, -std=c++20).
//
// A kernel source written for NVRTC (no #include, CUDA built-ins only) is compiled as C++ with this
// header force-included (tests/kernels/cuda_emul/build.py does it). rf_emul::launch(kernel, grid, block,
// args...) then runs the grid the way the hardware is allowed to: blocks one after another, and
// within a block every CUDA thread as a real OS thread, so the block's threads truly interleave.
// Synchronisation is real: __syncthreads() is a barrier over the block, and every warp shuffle is
// an exchange through a per-warp buffer between two warp barriers (write own lane, wait, read the
// source lane, wait). A kernel that forgets a barrier therefore races here as it would on a GPU.
//
// The model, and where it is stricter than the hardware (each of these is undefined behaviour in
// CUDA; here it is reported as a launch error instead of a wrong answer or a hang):
// * Full warps only: blockDim.x must be a multiple of 32 (and 32..1024), every shuffle / vote /
//   __syncwarp must name the full mask 0xffffffff and all 32 lanes of the warp must take part.
// * Every thread of a block must reach the same sequence of __syncthreads; every lane of a warp the
//   same sequence of warp operations (shuffle flavour, __syncwarp, vote). A mismatch is detected
//   where it happens (lanes meeting at one barrier with different operations), when a thread
//   returns while others wait for it, and by per-thread counts after the block. A deadlock (every
//   live thread waiting at some barrier no one else will reach) aborts the block instead of hanging.
// * An exception thrown in a kernel thread (a misaligned vector load, a failed assert(), a bad
//   mask) aborts the block: threads waiting at a barrier are woken and unwind, threads still running
//   stop at their next barrier (or finish), and launch() throws rf_emul::error naming the block and
//   thread. Nothing can stop a thread that spins forever or crashes the process (an out-of-bounds
//   access is as undefined here as on the device, and may crash the test process).
//
// Memory: pointers are host pointers (NumPy data); global memory is the process's memory.
// __shared__ is `static`: blocks run one at a time, so a function-static variable is shared by
// exactly the threads of the running block. Unlike on a GPU it starts zeroed and keeps its values
// between blocks and launches: a kernel that reads shared memory it did not write in the same block
// is NOT caught (GCC drops section attributes on template statics, so it cannot be poisoned).
// Dynamic shared memory (`extern __shared__ T s[];`) is not supported.
//
// Arithmetic: compile with -ffp-contract=off (build.py does): nothing is fused unless the kernel
// asks (__fmaf_rn/__fma_rn/fma). NVRTC contracts a*b+c into an FMA by default; kernels that need
// bit-identical results on both must use the __*_rn intrinsics, which are plain IEEE operations
// here. Math functions (expf, tanh, log1p, ...) are the C library's: correctly rounded or close,
// but not bit-identical to CUDA's libdevice (which is within its documented ulp bounds).
//
// Not emulated: y/z dimensions (always 1), __CUDA_ARCH__ (undefined; pass -D__CUDA_ARCH__=... via
// build(extra_flags=...) if a kernel needs it), half types, textures, cooperative groups, clusters,
// device-side launches, fast-math intrinsics (__expf, ...), dynamic shared memory.
//
// Lanes of a warp are independent threads too, as on Volta and later: warp-synchronous code that
// shares memory without __syncwarp() races here. The built-in variables and the launch lock are
// per shared library; launches are serialised per library, so Python threads may call wrappers
// concurrently. Error reporting to Python: wrap a launch in rf_emul::guarded(...), which returns 0
// or 1 and keeps the message for rf_emul_last_error() (see build.py for the pattern).

#pragma once

// Every standard header first: the CUDA keyword macros below (notably __noinline__) would break
// library headers included after them.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cassert>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <math.h>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#define RF_CUDA_EMUL 1

// The emulator's own symbols (built-in variables, runtime, intrinsics) stay inside each library:
// two libraries loaded into one process never share a blockIdx or a launch lock, whatever dlopen
// flags loaded them. The kernels' code that follows the header keeps the default visibility.
#pragma GCC visibility push(hidden)

// ---------------------------------------------------------------- execution-space keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __shared__ static  // see the header comment: blocks run one at a time
#define __constant__
#define __managed__
#define __grid_constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is a g++ keyword already, with the same meaning as in CUDA: left as it is.

// ---------------------------------------------------------------- vector types (CUDA's layout)
#define RF_EMUL_VEC2(T, N, A)                                                                      \
    struct __attribute__((aligned(A))) N {                                                         \
        T x, y;                                                                                    \
    };                                                                                             \
    inline N make_##N(T x, T y) { return N{x, y}; }
#define RF_EMUL_VEC3(T, N)                                                                         \
    struct N {                                                                                     \
        T x, y, z;                                                                                 \
    };                                                                                             \
    inline N make_##N(T x, T y, T z) { return N{x, y, z}; }
#define RF_EMUL_VEC4(T, N, A)                                                                      \
    struct __attribute__((aligned(A))) N {                                                         \
        T x, y, z, w;                                                                              \
    };                                                                                             \
    inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }

RF_EMUL_VEC2(float, float2, 8)
RF_EMUL_VEC3(float, float3)
RF_EMUL_VEC4(float, float4, 16)
RF_EMUL_VEC2(double, double2, 16)
RF_EMUL_VEC3(double, double3)
RF_EMUL_VEC4(double, double4, 16)  // CUDA's double4 is 16-byte aligned (deprecated in CUDA 13)
RF_EMUL_VEC4(double, double4_16a, 16)
RF_EMUL_VEC4(double, double4_32a, 32)
RF_EMUL_VEC2(int, int2, 8)
RF_EMUL_VEC3(int, int3)
RF_EMUL_VEC4(int, int4, 16)
RF_EMUL_VEC2(unsigned int, uint2, 8)
RF_EMUL_VEC3(unsigned int, uint3)
RF_EMUL_VEC4(unsigned int, uint4, 16)
RF_EMUL_VEC2(long long, longlong2, 16)
RF_EMUL_VEC2(unsigned long long, ulonglong2, 16)
#undef RF_EMUL_VEC2
#undef RF_EMUL_VEC3
#undef RF_EMUL_VEC4

static_assert(sizeof(float2) == 8 && alignof(float2) == 8);
static_assert(sizeof(float4) == 16 && alignof(float4) == 16);
static_assert(sizeof(double2) == 16 && alignof(double2) == 16);
static_assert(sizeof(double4) == 32 && alignof(double4) == 16);
static_assert(sizeof(int2) == 8 && alignof(int2) == 8);
static_assert(std::is_trivial_v<float4> && std::is_trivial_v<double2>);  // usable in unions, __shared__

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

// ---------------------------------------------------------------- built-in variables
inline thread_local uint3 threadIdx;  // each OS thread is one CUDA thread
inline uint3 blockIdx;                // set by the launcher before a block's threads start
inline dim3 blockDim;
inline dim3 gridDim;
inline constexpr int warpSize = 32;

// ---------------------------------------------------------------- the block runtime
namespace rf_emul {

// A launch failed: bad configuration, or a kernel thread failed (the message says which).
struct error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Thrown inside kernel threads to unwind them when their block was aborted; never escapes launch().
struct aborted_unwind {};

enum op_kind : int {
    op_none = 0,
    op_syncthreads,
    op_syncthreads_count,
    op_syncthreads_and,
    op_syncthreads_or,
    op_syncwarp,
    op_shfl_idx,
    op_shfl_up,
    op_shfl_down,
    op_shfl_xor,
    op_vote,
};

inline const char *op_name(int k) {
    static const char *const names[] = {"(none)",        "__syncthreads",   "__syncthreads_count",
                                        "__syncthreads_and", "__syncthreads_or", "__syncwarp",
                                        "__shfl_sync",   "__shfl_up_sync",  "__shfl_down_sync",
                                        "__shfl_xor_sync", "a warp vote (__ballot/__any/__all_sync)"};
    return (k >= 0 && k <= op_vote) ? names[k] : "?";
}

inline std::string fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
inline std::string fmt(const char *f, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, f);
    std::vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

// One barrier: `expected` participants (it shrinks as threads exit), the operation the current
// phase is for, and a sum over the arrivals (for __syncthreads_count & co.). Waiters sleep on the
// phase counter (a futex) rather than on the block's mutex, so a release does not make hundreds of
// threads queue for one lock; the top bit of `phase` marks an aborted block.
inline constexpr unsigned phase_aborted = 0x80000000u;
struct barrier_state {
    unsigned expected = 0, arrived = 0;
    int kind = op_none;
    long long acc = 0, result = 0;
    unsigned result_n = 0;
    std::atomic<unsigned> phase{0};
};

// The state of the running block. One mutex guards every barrier of the block, which makes the
// deadlock test exact: `blocked` counts threads waiting at a barrier that has not completed, and
// when it equals the number of live threads nobody can ever release anybody.
class block_state {
  public:
    explicit block_state(unsigned nthreads)
        : n(nthreads), nwarps(nthreads / 32), alive(nthreads), warp_bar(new barrier_state[nthreads / 32]),
          xbuf(new unsigned long long[nthreads]()), block_ops(nthreads, 0), warp_ops(nthreads, 0) {
        block_bar.expected = n;
        for (unsigned w = 0; w < nwarps; ++w) warp_bar[w].expected = 32;
    }

    struct phase_result {
        long long sum;      // the phase's sum of `contrib` (for __syncthreads_count & co.)
        unsigned arrivals;  // how many threads took part
    };

    // Arrive at the block barrier (warp < 0) or warp `warp`'s barrier and wait for the phase to
    // complete.
    phase_result arrive_and_wait(int warp, int kind, long long contrib = 0) {
        const unsigned t = threadIdx.x;
        barrier_state &b = warp < 0 ? block_bar : warp_bar[warp];
        (warp < 0 ? block_ops : warp_ops)[t] += 1;
        std::unique_lock<std::mutex> lk(m);
        if (is_aborted) throw aborted_unwind{};
        if (b.arrived == 0) {
            b.kind = kind;
            b.acc = 0;
        } else if (b.kind != kind) {
            abort_locked(fmt("divergent %s: thread %u called %s while %u other thread(s) wait in %s",
                             warp < 0 ? "block" : "warp", t, op_name(kind), b.arrived, op_name(b.kind)));
            throw aborted_unwind{};
        }
        b.acc += contrib;
        const unsigned ph = b.phase.load(std::memory_order_relaxed);
        if (++b.arrived == b.expected) {
            release_locked(b, b.arrived - 1);
            return {b.result, b.result_n};
        }
        ++blocked;
        if (blocked == alive) {
            abort_locked(deadlock_locked());
            throw aborted_unwind{};
        }
        lk.unlock();
        unsigned now;
        while ((now = b.phase.load(std::memory_order_acquire)) == ph) b.phase.wait(ph, std::memory_order_acquire);
        if (now & phase_aborted) throw aborted_unwind{};
        // Written before the phase moved on (release/acquire); the next phase cannot complete and
        // overwrite them before this thread arrives again.
        return {b.result, b.result_n};
    }

    // Thread t returns from the kernel (or unwinds). It leaves both of its barriers; if anyone is
    // waiting at one of them, they wait for a thread that will never come: report it.
    void exit_thread(unsigned t) {
        std::lock_guard<std::mutex> lk(m);
        --alive;
        if (is_aborted) return;
        barrier_state &wb = warp_bar[t / 32];
        for (barrier_state *b : {&block_bar, &wb}) {
            if (b->arrived > 0) {
                abort_locked(fmt("thread %u returned while %u thread(s) of its %s wait for it in %s", t, b->arrived,
                                 b == &block_bar ? "block" : "warp", op_name(b->kind)));
                return;
            }
            --b->expected;
        }
        if (alive > 0 && blocked == alive) abort_locked(deadlock_locked());
    }

    // Thread t failed with an exception: record the first failure and stop the block.
    void fail(unsigned t, const std::string &what) {
        std::lock_guard<std::mutex> lk(m);
        if (!is_aborted) abort_locked(fmt("thread %u: ", t) + what);
    }

    // The block's failure, or a mismatch of per-thread operation counts; empty when all is well.
    std::string verdict() const {
        if (is_aborted) return reason;
        for (unsigned t = 1; t < n; ++t)
            if (block_ops[t] != block_ops[0])
                return fmt("divergent block: thread 0 passed %llu block barriers (__syncthreads*), thread %u %llu",
                           block_ops[0], t, block_ops[t]);
        for (unsigned t = 0; t < n; ++t)
            if (warp_ops[t] != warp_ops[t & ~31u])
                return fmt("divergent warp: lane 0 of warp %u passed %llu warp barriers (2 per shuffle or vote, 1 per "
                           "__syncwarp), lane %u %llu",
                           t / 32, warp_ops[t & ~31u], t % 32, warp_ops[t]);
        return {};
    }

    unsigned long long *exchange(unsigned warp) { return xbuf.get() + 32 * warp; }

  private:
    void release_locked(barrier_state &b, unsigned waiters) {
        blocked -= waiters;
        b.result = b.acc;
        b.result_n = b.arrived;
        b.arrived = 0;
        b.phase.store((b.phase.load(std::memory_order_relaxed) + 1) & ~phase_aborted, std::memory_order_release);
        b.phase.notify_all();
    }

    void abort_locked(std::string why) {
        is_aborted = true;
        reason = std::move(why);
        auto wake = [](barrier_state &bar) {  // waiters see the phase change, then the abort bit
            bar.phase.fetch_or(phase_aborted, std::memory_order_release);
            bar.phase.notify_all();
        };
        wake(block_bar);
        for (unsigned w = 0; w < nwarps; ++w) wake(warp_bar[w]);
    }

    std::string deadlock_locked() const {
        std::string s = "deadlock: every live thread waits at a barrier that the others never reach: ";
        if (block_bar.arrived) s += fmt("%u at %s", block_bar.arrived, op_name(block_bar.kind));
        for (unsigned w = 0; w < nwarps; ++w)
            if (warp_bar[w].arrived)
                s += fmt("%swarp %u: %u lane(s) at %s", s.back() == ' ' ? "" : "; ", w, warp_bar[w].arrived,
                         op_name(warp_bar[w].kind));
        return s;
    }

    const unsigned n, nwarps;
    std::mutex m;
    unsigned alive, blocked = 0;
    bool is_aborted = false;
    std::string reason;
    barrier_state block_bar;
    std::unique_ptr<barrier_state[]> warp_bar;
    std::unique_ptr<unsigned long long[]> xbuf;
    std::vector<unsigned long long> block_ops, warp_ops;  // per thread; each written by its own thread
};

inline block_state *current_block = nullptr;      // the running block (launch sets it)
inline thread_local bool in_kernel_thread = false;  // device-side launches are not supported

inline block_state &block() {
    if (!in_kernel_thread || current_block == nullptr)
        throw error("a CUDA device built-in (barrier, shuffle, vote) was called outside a kernel launched by "
                    "rf_emul::launch");
    return *current_block;
}

inline void require_full_mask(unsigned mask, const char *what) {
    if (mask != 0xffffffffu)
        throw error(fmt("%s with mask 0x%08x: the emulator supports only full-warp masks (0xffffffff)", what, mask));
}

inline std::mutex &launch_mutex() {
    static std::mutex m;
    return m;
}

// Run kernel(args...) on `grid` blocks of `block` threads (x dimension only). Blocks run one after
// another; a block's threads are OS threads started together and joined before the next block.
// Throws rf_emul::error on a bad configuration or when any thread of any block failed.
template <class K, class... A> void launch(K kernel, unsigned grid, unsigned block, A... args) {
    if (in_kernel_thread) throw error("device-side kernel launches are not supported");
    if (grid == 0 || grid > 0x7fffffffu) throw error(fmt("invalid grid: %u blocks (1 .. 2^31-1)", grid));
    if (block == 0 || block > 1024 || block % 32 != 0)
        throw error(fmt("invalid block: %u threads; the emulator needs a multiple of 32 (full warps) in 32 .. 1024",
                        block));
    std::lock_guard<std::mutex> serial(launch_mutex());
    for (unsigned b = 0; b < grid; ++b) {
        block_state state(block);
        blockIdx = uint3{b, 0, 0};
        gridDim = dim3(grid);
        blockDim = dim3(block);
        current_block = &state;
        std::vector<std::thread> threads;
        threads.reserve(block);
        auto body = [&](unsigned t) {
            threadIdx = uint3{t, 0, 0};
            in_kernel_thread = true;
            try {
                kernel(args...);
            } catch (const aborted_unwind &) {
            } catch (const std::exception &e) {
                state.fail(t, e.what());
            } catch (...) {
                state.fail(t, "unknown exception");
            }
            state.exit_thread(t);
        };
        std::string start_failure;
        for (unsigned t = 0; t < block; ++t) {
            try {
                threads.emplace_back(body, t);
            } catch (const std::exception &e) {
                start_failure = fmt("could not start thread %u of %u: %s", t, block, e.what());
                state.fail(t, start_failure);
                for (unsigned u = t; u < block; ++u) state.exit_thread(u);
                break;
            }
        }
        for (auto &th : threads) th.join();
        current_block = nullptr;
        std::string why = state.verdict();
        if (!why.empty()) throw error(fmt("block %u of %u (%u threads): ", b, grid, block) + why);
    }
}

// Run f(); 0 on success, else 1 with the message kept for rf_emul_last_error() (per calling thread).
inline std::string &last_error() {
    static thread_local std::string s;
    return s;
}

template <class F> int guarded(F &&f) noexcept {
    try {
        f();
        last_error().clear();
        return 0;
    } catch (const std::exception &e) {
        last_error() = e.what();
    } catch (...) {
        last_error() = "unknown exception";
    }
    return 1;
}

// ---------------------------------------------------------------- shuffles
// PTX shfl.sync semantics with c = ((32 - width) << 8) | clamp: the source lane j of `lane` is
// computed within its segment of `width` lanes; a lane whose j falls outside the allowed range
// keeps its own value. Only the low 5 bits of delta / lane mask / source lane are used.
inline unsigned shfl_source(int kind, unsigned lane, unsigned b, int width) {
    if (width < 1 || width > 32 || (width & (width - 1)))
        throw error(fmt("%s with width %d: width must be a power of two in 1 .. 32", op_name(kind), width));
    const unsigned segmask = unsigned(32 - width) & 31u, bval = b & 31u;
    const unsigned minLane = lane & segmask;
    const unsigned maxLane = minLane | ((kind == op_shfl_up ? 0u : 31u) & ~segmask);
    int j;
    bool ok;
    switch (kind) {
    case op_shfl_up:
        j = int(lane) - int(bval);
        ok = j >= int(maxLane);
        break;
    case op_shfl_down:
        j = int(lane + bval);
        ok = j <= int(maxLane);
        break;
    case op_shfl_xor:
        j = int(lane ^ bval);
        ok = j <= int(maxLane);
        break;
    default:  // idx
        j = int(minLane | (bval & ~segmask));
        ok = j <= int(maxLane);
        break;
    }
    return ok ? unsigned(j) : lane;
}

template <class T> T shfl(int kind, unsigned mask, T var, unsigned b, int width) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8);
    require_full_mask(mask, op_name(kind));
    block_state &blk = block();
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const unsigned src = shfl_source(kind, lane, b, width);
    unsigned long long *x = blk.exchange(warp);
    unsigned long long bits = 0;
    std::memcpy(&bits, &var, sizeof(T));
    x[lane] = bits;
    blk.arrive_and_wait(int(warp), kind);  // every lane has written
    bits = x[src];
    blk.arrive_and_wait(int(warp), kind);  // every lane has read: the buffer may be reused
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

}  // namespace rf_emul

#define RF_EMUL_SHFL(T)                                                                            \
    inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {                 \
        return rf_emul::shfl(rf_emul::op_shfl_idx, mask, var, unsigned(srcLane), width);            \
    }                                                                                              \
    inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {       \
        return rf_emul::shfl(rf_emul::op_shfl_up, mask, var, delta, width);                         \
    }                                                                                              \
    inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {     \
        return rf_emul::shfl(rf_emul::op_shfl_down, mask, var, delta, width);                       \
    }                                                                                              \
    inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {            \
        return rf_emul::shfl(rf_emul::op_shfl_xor, mask, var, unsigned(laneMask), width);           \
    }
RF_EMUL_SHFL(int)
RF_EMUL_SHFL(unsigned int)
RF_EMUL_SHFL(long)
RF_EMUL_SHFL(unsigned long)
RF_EMUL_SHFL(long long)
RF_EMUL_SHFL(unsigned long long)
RF_EMUL_SHFL(float)
RF_EMUL_SHFL(double)
#undef RF_EMUL_SHFL

// ---------------------------------------------------------------- barriers and votes
inline void __syncthreads() { rf_emul::block().arrive_and_wait(-1, rf_emul::op_syncthreads); }
inline int __syncthreads_count(int pred) {
    return int(rf_emul::block().arrive_and_wait(-1, rf_emul::op_syncthreads_count, pred != 0).sum);
}
inline int __syncthreads_and(int pred) {
    const auto r = rf_emul::block().arrive_and_wait(-1, rf_emul::op_syncthreads_and, pred != 0);
    return r.sum == (long long)r.arrivals;
}
inline int __syncthreads_or(int pred) {
    return rf_emul::block().arrive_and_wait(-1, rf_emul::op_syncthreads_or, pred != 0).sum != 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    rf_emul::require_full_mask(mask, "__syncwarp");
    rf_emul::block().arrive_and_wait(int(threadIdx.x >> 5), rf_emul::op_syncwarp);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    rf_emul::require_full_mask(mask, "__ballot_sync");
    rf_emul::block_state &blk = rf_emul::block();
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    unsigned long long *x = blk.exchange(warp);
    x[lane] = pred != 0;
    blk.arrive_and_wait(int(warp), rf_emul::op_vote);
    unsigned bits = 0;
    for (unsigned l = 0; l < 32; ++l) bits |= unsigned(x[l] != 0) << l;
    blk.arrive_and_wait(int(warp), rf_emul::op_vote);
    return bits;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == 0xffffffffu; }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---------------------------------------------------------------- cache-hinted loads and stores
// The hints do not change results; the emulation checks what the hardware requires instead: the
// address must be aligned to the type (a misaligned float4 load faults on a GPU).
namespace rf_emul {
template <class T> inline void check_aligned(const T *p, const char *what) {
    if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0)
        throw error(fmt("%s: misaligned address %p for a %zu-byte-aligned type", what, (const void *)p, alignof(T)));
}
}  // namespace rf_emul

#define RF_EMUL_LDST(T)                                                                            \
    inline T __ldg(const T *p) { return rf_emul::check_aligned(p, "__ldg"), *p; }                  \
    inline T __ldcg(const T *p) { return rf_emul::check_aligned(p, "__ldcg"), *p; }                \
    inline T __ldca(const T *p) { return rf_emul::check_aligned(p, "__ldca"), *p; }                \
    inline T __ldcs(const T *p) { return rf_emul::check_aligned(p, "__ldcs"), *p; }                \
    inline T __ldlu(const T *p) { return rf_emul::check_aligned(p, "__ldlu"), *p; }                \
    inline T __ldcv(const T *p) { return rf_emul::check_aligned(p, "__ldcv"), *p; }                \
    inline void __stwb(T *p, T v) { rf_emul::check_aligned(p, "__stwb"), *p = v; }                \
    inline void __stcg(T *p, T v) { rf_emul::check_aligned(p, "__stcg"), *p = v; }                \
    inline void __stcs(T *p, T v) { rf_emul::check_aligned(p, "__stcs"), *p = v; }                \
    inline void __stwt(T *p, T v) { rf_emul::check_aligned(p, "__stwt"), *p = v; }
RF_EMUL_LDST(char)
RF_EMUL_LDST(signed char)
RF_EMUL_LDST(unsigned char)
RF_EMUL_LDST(short)
RF_EMUL_LDST(unsigned short)
RF_EMUL_LDST(int)
RF_EMUL_LDST(unsigned int)
RF_EMUL_LDST(long)
RF_EMUL_LDST(unsigned long)
RF_EMUL_LDST(long long)
RF_EMUL_LDST(unsigned long long)
RF_EMUL_LDST(float)
RF_EMUL_LDST(double)
RF_EMUL_LDST(float2)
RF_EMUL_LDST(float4)
RF_EMUL_LDST(double2)
RF_EMUL_LDST(int2)
RF_EMUL_LDST(int4)
RF_EMUL_LDST(uint2)
RF_EMUL_LDST(uint4)
RF_EMUL_LDST(longlong2)
RF_EMUL_LDST(ulonglong2)
#undef RF_EMUL_LDST
// (CUDA has no __ldg & co. for double4; CUDA 13 adds them for double4_32a on sm_100 only.)

// ---------------------------------------------------------------- atomics (relaxed, like CUDA's)
#define RF_EMUL_ATOMIC_ADD(T)                                                                      \
    inline T atomicAdd(T *p, T v) { return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed); }
RF_EMUL_ATOMIC_ADD(int)
RF_EMUL_ATOMIC_ADD(unsigned int)
RF_EMUL_ATOMIC_ADD(unsigned long long)
RF_EMUL_ATOMIC_ADD(float)
RF_EMUL_ATOMIC_ADD(double)
#undef RF_EMUL_ATOMIC_ADD

#define RF_EMUL_ATOMIC_INT(T)                                                                      \
    inline T atomicSub(T *p, T v) { return std::atomic_ref<T>(*p).fetch_sub(v, std::memory_order_relaxed); } \
    inline T atomicExch(T *p, T v) { return std::atomic_ref<T>(*p).exchange(v, std::memory_order_relaxed); } \
    inline T atomicCAS(T *p, T expected, T desired) {                                              \
        std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired, std::memory_order_relaxed); \
        return expected; /* the old value either way */                                          \
    }                                                                                              \
    inline T atomicMax(T *p, T v) {                                                                \
        std::atomic_ref<T> a(*p);                                                                  \
        T old = a.load(std::memory_order_relaxed);                                                 \
        while (old < v && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {}          \
        return old;                                                                                \
    }                                                                                              \
    inline T atomicMin(T *p, T v) {                                                                \
        std::atomic_ref<T> a(*p);                                                                  \
        T old = a.load(std::memory_order_relaxed);                                                 \
        while (v < old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {}          \
        return old;                                                                                \
    }
RF_EMUL_ATOMIC_INT(int)
RF_EMUL_ATOMIC_INT(unsigned int)
RF_EMUL_ATOMIC_INT(unsigned long long)
#undef RF_EMUL_ATOMIC_INT
inline float atomicExch(float *p, float v) { return std::atomic_ref<float>(*p).exchange(v, std::memory_order_relaxed); }

// ---------------------------------------------------------------- IEEE round-to-nearest intrinsics
// Plain operations: with -ffp-contract=off g++ rounds each one separately, as these promise.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }

// ---------------------------------------------------------------- bits
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }
inline unsigned int __float_as_uint(float v) { return std::bit_cast<unsigned int>(v); }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline float __uint_as_float(unsigned int v) { return std::bit_cast<float>(v); }
inline long long __double_as_longlong(double v) { return std::bit_cast<long long>(v); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }
inline int __popc(unsigned int v) { return std::popcount(v); }
inline int __popcll(unsigned long long v) { return std::popcount(v); }
inline int __clz(int v) { return std::countl_zero(unsigned(v)); }
inline int __clzll(long long v) { return std::countl_zero((unsigned long long)v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }

// ---------------------------------------------------------------- CUDA's global min / max
#define RF_EMUL_MINMAX(T)                                                                          \
    inline T min(T a, T b) { return b < a ? b : a; }                                               \
    inline T max(T a, T b) { return a < b ? b : a; }
RF_EMUL_MINMAX(int)
RF_EMUL_MINMAX(unsigned int)
RF_EMUL_MINMAX(long)
RF_EMUL_MINMAX(unsigned long)
RF_EMUL_MINMAX(long long)
RF_EMUL_MINMAX(unsigned long long)
#undef RF_EMUL_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---------------------------------------------------------------- device assert
// A failed assert() in a kernel traps the context on a GPU; here it fails the launch (an exception
// in the thread) rather than aborting the test process. NDEBUG disables it as usual. (A later
// #include <assert.h> / <cassert> restores the C library's aborting assert.)
#undef assert
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
#define assert(e)                                                                                  \
    ((e) ? (void)0                                                                                 \
         : throw rf_emul::error(rf_emul::fmt("device assert failed: %s (%s:%d)", #e, __FILE__, __LINE__)))
#endif

#pragma GCC visibility pop

// ---------------------------------------------------------------- error message for ctypes
// Defined in every translation unit that includes this header (inline, kept by `used`), exported.
extern "C" __attribute__((used, visibility("default"))) inline const char *rf_emul_last_error(void) {
    return rf_emul::last_error().c_str();
}
