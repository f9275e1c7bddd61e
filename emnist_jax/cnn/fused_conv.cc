// The study's convolution blocks, max_pool_same(leaky_relu(conv3x3_same(x, w) + b)), as hand-written
// CPU kernels behind XLA FFI handlers, run on XLA's intra-op threads; no library. Built with the C++
// compiler (g++ or clang++) on first use by emnist_jax/cnn/fused.py, which wraps the handlers in a
// jax.custom_vjp. NHWC activations, HWIO weights. Portable vector extensions only, as wide as the
// target's registers (AVX-512, AVX2, SSE, NEON); tests/native/harness.cc checks every kernel against a
// plain convolution on each target.
//
// conv1 (few input channels: "direct"): the block is computed a pooling window at a time (a 4x4 input
// patch, 2x2 outputs, their maximum), so neither the full-size activation nor its gradient is ever
// written; the backward pass recomputes the window instead of storing it.
//   fused_direct_fwd(x, w, b; slope)      -> p
//   fused_direct_bwd_w(x, w, b, dp; slope) -> (dw, db)
//   fused_direct_bwd_x(x, w, b, dp; slope) -> dx          (XLA drops it where no one asks for it)
//
// conv2, conv3 (channels a multiple of 16: Winograd F(m x m, 3 x 3), m the `tile` attribute: fused.py
// passes 2 in training and 4 in evaluation where it has fewer elements): an (m + 2)^2 input tile
// becomes an m x m output tile through (m + 2)^2 matrix products over channels (2.25x or 4x fewer
// multiplies than the direct form), and an output tile is a whole number of pooling windows, so bias,
// LeakyReLU and the pool are applied as each tile is produced.
// The backward pass is the gradient of the same Winograd algorithm, in one sweep: the pool/LeakyReLU
// gradient per tile from the mask, then dW through the transposed transforms and dx through the
// transposed products and input transform, added into the overlapping input tiles.
//   fused_wino_fwd(x, w, b; slope, tile)          -> (p, mask)   mask: a byte per pooling window and channel
//   fused_wino_infer(x, w, b; slope, tile)        -> p
//   fused_wino_bwd(x, w, mask, dp; slope, tile)   -> (dx, dw, db)
//
// Tie rule of the pool's gradient, as JAX's for a max: a window's gradient is split evenly among its
// maxima; LeakyReLU's branch is the pre-activation's sign (x >= 0), as in JAX's leaky_relu.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#ifdef FUSED_CONV_KERNELS_ONLY
// The kernels alone, without XLA's headers: tests/native/harness.cc includes this file so and
// supplies an ffi::ThreadPool (num_threads, Schedule).
#else
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
#endif

namespace {

// The vector is as wide as the target's registers: L floats. A wider one (64 bytes where the target
// has 32- or 16-byte registers) is split by the compiler, and its selects, compares and byte
// conversions become scalar code. kRegisters: the target's vector registers, which the blocking of
// the matrix product below fills. Channel counts are multiples of 16, so of every L.
#if defined(__AVX512F__)
#define FUSED_CONV_LANES 16
constexpr int kRegisters = 32;
#elif defined(__AVX__)
#define FUSED_CONV_LANES 8
constexpr int kRegisters = 16;
#elif defined(__ARM_NEON) || defined(__aarch64__)
#define FUSED_CONV_LANES 4
constexpr int kRegisters = 32;
#else  // SSE (x86-64 up to v2), and any other target: 16-byte vectors
#define FUSED_CONV_LANES 4
constexpr int kRegisters = 16;
#endif
constexpr int L = FUSED_CONV_LANES;

typedef float vf __attribute__((vector_size(4 * FUSED_CONV_LANES)));
// The types loads and stores go through may alias float and byte buffers (as the compilers' own unaligned
// intrinsic types do): a plain vector type read through a float* breaks strict aliasing.
typedef float vfu __attribute__((vector_size(4 * FUSED_CONV_LANES), aligned(4), __may_alias__));
typedef int32_t vi __attribute__((vector_size(4 * FUSED_CONV_LANES)));
typedef uint8_t vb __attribute__((vector_size(FUSED_CONV_LANES), aligned(1), __may_alias__));

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
template <size_t... l>
inline vf splat(float s, std::index_sequence<l...>) {
  return vf{((void)l, s)...};  // {s, s, ...}: one broadcast (element by element, it was L inserts)
}
inline vf splat(float s) { return splat(s, std::make_index_sequence<L>{}); }
inline vf vmax(vf a, vf b) { return ((a > b) | (a != a)) ? a : b; }  // a NaN wins, as in jnp.max
inline vf leaky(vf v, float slope) { return v >= 0 ? v : v * slope; }

// Per-thread buffers, grown to the largest size asked for and kept: a fresh allocation per call
// would map and fault in fresh pages every step.
// 64-byte aligned: a vector load that straddles two cache lines costs two. A handler's calling
// thread holds kU, kTurned and kPartial across a call; the parts (on every thread, the caller
// included) use kV, kM and kZeros, or (direct) kImage and kGradient.
enum Slot { kV, kM, kImage, kU, kTurned, kGradient, kPartial, kZeros, kSlots };

struct Buffer64 {
  float* data = nullptr;
  size_t size = 0;
  ~Buffer64() { std::free(data); }
};

Buffer64& Scratch(Slot slot) {
  thread_local Buffer64 buffers[kSlots];
  return buffers[slot];
}

float* Sized(Buffer64& buffer, size_t n) {
  if (buffer.size < n) {
    std::free(buffer.data);
    buffer.size = 0;
    buffer.data = static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64));
    if (!buffer.data) throw std::bad_alloc();
    buffer.size = n;
  }
  return buffer.data;
}

// ---- running in parallel on XLA's own threads ------------------------------------------------------

// body(part) for every part in [0, count): the caller runs parts too, and XLA's intra-op thread pool
// (the threads XLA's own CPU kernels use) takes the others, so no second thread pool competes for the
// cores. A part is claimed by whichever thread comes first and the caller never waits for a task that
// has not started, so a busy pool cannot deadlock it; a task that starts late finds nothing left and
// never touches `body`. Work and partial sums are split by part, `per_thread` parts per pool thread,
// so the numbers do not depend on which thread ran what (they do on the pool's size: the same machine
// and thread count give the same numbers). Passes without partial sums take several parts per thread:
// a thread that the shared machine slows down then leaves its last parts to the others.
// One compiled copy of a part's body, which every thread calls: copies inlined into the caller and
// into the pool's task may be compiled differently (one contracts an add and a product into an
// FMA, the other not), and a part's numbers would then depend on the thread that ran it.
template <typename F>
__attribute__((noinline)) void RunPart(F& body, int part) {
  body(part);
}

class Parts {
 public:
  explicit Parts(ffi::ThreadPool* pool, int per_thread = 1)
      : pool_(pool), threads_(std::max<int64_t>(1, pool->num_threads())),
        count_(threads_ == 1 ? 1 : threads_ * per_thread) {}
  int count() const { return count_; }

  template <typename F>
  void Run(F&& body) const {
    if (count_ == 1) return RunPart(body, 0);
    struct State {
      std::atomic<int> next{0}, finished{0};
      std::exception_ptr error;  // the first part's failure, written before its `finished` increment
      std::atomic<bool> failed{false};
    };
    auto state = std::make_shared<State>();
    auto* fn = &body;
    const int count = count_;
    auto work = [state, fn, count] {
      for (int part; (part = state->next.fetch_add(1)) < count;) {
        try {
          RunPart(*fn, part);
        } catch (...) {  // reported by the caller, never thrown on a pool thread
          if (!state->failed.exchange(true)) state->error = std::current_exception();
        }
        state->finished.fetch_add(1, std::memory_order_release);
      }
    };
    try {
      for (int k = 1; k < threads_; ++k) pool_->Schedule(decltype(work)(work));  // a copy: Schedule owns it
    } catch (...) {
      // fewer helpers (Schedule's allocation failed): the caller takes the parts they leave
    }
    work();
    while (state->finished.load(std::memory_order_acquire) < count_) std::this_thread::yield();
    if (state->error) std::rethrow_exception(state->error);
  }

  // [begin, end) of part `part` of n items
  std::pair<int64_t, int64_t> Range(int64_t n, int part) const { return {n * part / count_, n * (part + 1) / count_}; }

 private:
  ffi::ThreadPool* pool_;
  int threads_, count_;
};

// parts per thread for the passes without partial sums
constexpr int kFine = 4;

// ---- a small matrix product: C (+)= A B, B row-major with L*NV columns per panel -----------------
// Layout and accumulation are template arguments: with them known, the inner loop is only loads,
// broadcasts and FMAs (~165 GFLOP/s per core alone on the 2-core development machine, against ~125
// with them read at run time; measured with a throwaway C++ timing harness).

// MR x L*NV block of C; A(m, k) at A[m * lda + k], or at A[m + k * lda] where kTransposed; C's
// groups of L columns ldg apart (L: plain row-major)
template <int MR, int NV, bool kTransposed, bool kAccumulate>
inline void Micro(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t ldg,
                  int64_t K) {
  vf c[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) c[i][j] = kAccumulate ? load(C + i * ldc + ldg * j) : vf{};
  for (int64_t k = 0; k < K; ++k) {
    vf b[NV];
    for (int j = 0; j < NV; ++j) b[j] = load(B + k * ldb + L * j);
    for (int i = 0; i < MR; ++i) {
      const vf a = splat(kTransposed ? A[i + k * lda] : A[i * lda + k]);
      for (int j = 0; j < NV; ++j) c[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) store(C + i * ldc + ldg * j, c[i][j]);
}

template <int MR, int NV, bool kTransposed, bool kAccumulate>
inline void Rows(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t ldg,
                 int64_t M, int64_t K) {
  const int64_t step = kTransposed ? 1 : lda;
  int64_t m = 0;
  for (; m + MR <= M; m += MR)
    Micro<MR, NV, kTransposed, kAccumulate>(A + m * step, lda, B, ldb, C + m * ldc, ldc, ldg, K);
  // the rest in as few calls as possible (a row at a time is load-bound): 32 = 5 x 6 + 2, 64 = 10 x 6 + 4
  for (; m + 4 <= M; m += 4)
    Micro<4, NV, kTransposed, kAccumulate>(A + m * step, lda, B, ldb, C + m * ldc, ldc, ldg, K);
  for (; m + 2 <= M; m += 2)
    Micro<2, NV, kTransposed, kAccumulate>(A + m * step, lda, B, ldb, C + m * ldc, ldc, ldg, K);
  for (; m < M; ++m) Micro<1, NV, kTransposed, kAccumulate>(A + m * step, lda, B, ldb, C + m * ldc, ldc, ldg, K);
}

// C (M x N) (+)= A (M x K) B (K x N); N a multiple of L; C's groups of L columns ldg apart. The
// micro-kernel's blocking fills the registers: MR x NV accumulators, NV vectors of B and a broadcast
// of A: 6 x 4 and 12 x 2 (26 of 32), or 6 x 2 and 12 x 1 (15 and 14 of 16).
template <bool kTransposed, bool kAccumulate>
void Gemm(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t M, int64_t N,
          int64_t K, int64_t ldg = L) {
  int64_t n = 0;
  if constexpr (kRegisters >= 32) {
    for (; n + 4 * L <= N; n += 4 * L)
      Rows<6, 4, kTransposed, kAccumulate>(A, lda, B + n, ldb, C + n / L * ldg, ldc, ldg, M, K);
    for (; n + 2 * L <= N; n += 2 * L)
      Rows<12, 2, kTransposed, kAccumulate>(A, lda, B + n, ldb, C + n / L * ldg, ldc, ldg, M, K);
  } else {
    for (; n + 2 * L <= N; n += 2 * L)
      Rows<6, 2, kTransposed, kAccumulate>(A, lda, B + n, ldb, C + n / L * ldg, ldc, ldg, M, K);
  }
  for (; n + L <= N; n += L)
    Rows<12, 1, kTransposed, kAccumulate>(A, lda, B + n, ldb, C + n / L * ldg, ldc, ldg, M, K);
}

// ---- Winograd F(m x m, 3 x 3) -------------------------------------------------------------------
// An (m + 2) x (m + 2) input tile d becomes an m x m output tile through (m + 2)^2 matrix products over
// the channels: Y = A^T [(G g G^T) . (B^T d B)] A (Lavin and Gray, 2015). m = 2 (16 products, 2.25x
// fewer multiplies than the direct form) or m = 4 (36 products, 4x fewer; its transforms have larger
// coefficients, so its float error is ~10x F(2x2)'s: about 1e-6 of the output's scale). Each output
// tile is a whole number of pooling windows, so bias, LeakyReLU and the pool are applied as it is made.

template <int m>
struct Tile;

template <>
struct Tile<2> {
  static constexpr int a = 4;  // input tile side
  static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr float G[4][3] = {{1, 0, 0}, {.5f, .5f, .5f}, {.5f, -.5f, .5f}, {0, 0, 1}};
  static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
  // Output tiles per block: the block's transforms stay in the L2 cache (72, 108 or 144 measured no
  // faster with a throwaway C++ timing harness on the 2-core development machine).
  static constexpr int64_t block = 36;
};

template <>
struct Tile<4> {
  static constexpr int a = 6;
  static constexpr float BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                     {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr float G[6][3] = {{1.f / 4, 0, 0},
                                    {-1.f / 6, -1.f / 6, -1.f / 6},
                                    {-1.f / 6, 1.f / 6, -1.f / 6},
                                    {1.f / 24, 1.f / 12, 1.f / 6},
                                    {1.f / 24, -1.f / 12, 1.f / 6},
                                    {0, 0, 1}};
  static constexpr float AT[4][6] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
  // a tile's transforms are 36/16 of F(2x2)'s, so fewer tiles per block (32 measured 0.96-1.04x, mixed)
  static constexpr int64_t block = kRegisters >= 32 ? 16 : 18;  // 18 = 3 x 6 rows: 0.91-0.97x the time with 16 registers (AVX2)
};

template <int R, int C>
struct Matrix {
  float at[R][C];
};

template <int R, int C>
constexpr Matrix<C, R> Transposed(const float (&M)[R][C]) {
  Matrix<C, R> t{};
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) t.at[j][i] = M[i][j];
  return t;
}

// sum over p of c[p] * v[p * stride], the zero coefficients skipped (the loops are unrolled, so the
// coefficients are constants and a transform is only its few adds and multiplies)
template <int P>
inline vf Combine(const float (&c)[P], const vf* v, int stride) {
  vf sum{};
  bool first = true;
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    if (c[p] == 0) continue;
    const vf term = c[p] == 1 ? v[p * stride] : c[p] == -1 ? -v[p * stride] : c[p] * v[p * stride];
    sum = first ? term : sum + term;
    first = false;
  }
  return sum;
}

// out = L in R^T: L (R1 x P), in (P x Q), R (R2 x Q)
template <int R1, int P, int R2, int Q>
inline void Sandwich(const float (&Left)[R1][P], const vf (&in)[P][Q], const float (&Right)[R2][Q],
                     vf (&out)[R1][R2]) {
  vf t[R1][Q];
#pragma GCC unroll 8
  for (int i = 0; i < R1; ++i)
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) t[i][q] = Combine(Left[i], &in[0][q], Q);
#pragma GCC unroll 8
  for (int i = 0; i < R1; ++i)
#pragma GCC unroll 8
    for (int k = 0; k < R2; ++k) out[i][k] = Combine(Right[k], &t[i][0], 1);
}

// F(4x4)'s input and output transforms along one line of a tile, with the shared sums of the usual
// factoring: 14 and 10 operations per line where the coefficient form above takes 22 and 18 (the
// compiler may not reassociate float sums to find them). The same values to float rounding.
// d[p * in] -> out[i * step]: B^T d, 6 values -> 6
inline void InputLine4(const vf* d, int in, vf* out, int step) {
  const vf d0 = d[0], d1 = d[in], d2 = d[2 * in], d3 = d[3 * in], d4 = d[4 * in], d5 = d[5 * in];
  const vf s = d4 - d2, t = d3 - d1;
  out[0] = 4.f * d0 + (d4 - 5.f * d2);
  out[step] = (d3 + d4) - 4.f * (d1 + d2);
  out[2 * step] = (d4 - d3) + 4.f * (d1 - d2);
  out[3 * step] = s + 2.f * t;
  out[4 * step] = s - 2.f * t;
  out[5 * step] = 4.f * d1 + (d5 - 5.f * d3);
}

// A^T m, 6 values -> 4
inline void OutputLine4(const vf* m, int in, vf* out, int step) {
  const vf a = m[in] + m[2 * in], b = m[in] - m[2 * in], c = m[3 * in] + m[4 * in], e = m[3 * in] - m[4 * in];
  out[0] = m[0] + a + c;
  out[step] = b + 2.f * e;
  out[2 * step] = a + 4.f * c;
  out[3 * step] = b + 8.f * e + m[5 * in];
}

// out = T in T^T for a line transform T (P values -> R): T applied down the columns, then along the rows
template <int R, int P, void (*Line)(const vf*, int, vf*, int)>
inline void ByLines(const vf (&in)[P][P], vf (&out)[R][R]) {
  vf t[R][P];
  for (int q = 0; q < P; ++q) Line(&in[0][q], P, &t[0][q], P);
  for (int i = 0; i < R; ++i) Line(&t[i][0], 1, &out[i][0], 1);
}

// v = B^T d B of an input tile
template <int m>
inline void InputTile(const vf (&d)[m + 2][m + 2], vf (&v)[m + 2][m + 2]) {
  if constexpr (m == 4)
    ByLines<6, 6, InputLine4>(d, v);
  else
    Sandwich(Tile<m>::BT, d, Tile<m>::BT, v);
}

// y = A^T mv A of a transformed output tile
template <int m>
inline void OutputTile(const vf (&mv)[m + 2][m + 2], vf (&y)[m][m]) {
  if constexpr (m == 4)
    ByLines<4, 6, OutputLine4>(mv, y);
  else
    Sandwich(Tile<m>::AT, mv, Tile<m>::AT, y);
}

template <int m>
struct Winograd {
  using T = Tile<m>;
  static constexpr int a = T::a, E = a * a;  // E: elements of a transformed tile
  static constexpr int64_t kBlock = T::block;
  static constexpr Matrix<a, m> A = Transposed(T::AT);
  static constexpr Matrix<3, a> GT = Transposed(T::G);
};

// of an image batch tiled for F(m x m, 3 x 3)
struct Geometry {
  int64_t n, h, w, th, tw, tiles, ph, pw;  // th x tw output tiles per image; ph x pw pooling windows
  Geometry(int64_t n_, int64_t h_, int64_t w_, int64_t m)
      : n(n_), h(h_), w(w_), th((h_ + m - 1) / m), tw((w_ + m - 1) / m), tiles(n_ * th * tw), ph((h_ + 1) / 2),
        pw((w_ + 1) / 2) {}
  int64_t blocks(int64_t per_block) const { return (tiles + per_block - 1) / per_block; }
  // image, tile row, tile column of tile t
  void where(int64_t t, int64_t* i, int64_t* r, int64_t* q) const {
    *i = t / (th * tw);
    *r = (t / tw) % th;
    *q = t % tw;
  }
};

// U[E][C][O] = G g G^T for every (c, o) of w (3, 3, C, O), L output channels at a time; with
// `swapped`, of w with its channel axes swapped, so U is [E][O][C] (the backward pass's product
// dV = Z U^T reads it so). C and O multiples of 16. In parallel: run once per call on the calling
// thread it cost as much as a block's matrix products (F(4x4) on conv3).
template <int m>
void WeightTransform(const Parts& parts, const float* w, int64_t C, int64_t O, bool swapped, float* U) {
  if (swapped) {
    float* turned = Sized(Scratch(kTurned), 9 * C * O);
    parts.Run([&](int part) {
      const auto [first, last] = parts.Range(O, part);
      for (int k = 0; k < 9; ++k)
        for (int64_t o = first; o < last; ++o)
          for (int64_t c = 0; c < C; ++c) turned[(k * O + o) * C + c] = w[(k * C + c) * O + o];
    });
    return WeightTransform<m>(parts, turned, O, C, false, U);
  }
  using W = Winograd<m>;
  parts.Run([&](int part) {
    const auto [first, last] = parts.Range(C, part);
    for (int64_t c = first; c < last; ++c)
      for (int64_t o = 0; o < O; o += L) {
        vf g[3][3], u[W::a][W::a];
        #pragma GCC unroll 36
        for (int k = 0; k < 9; ++k) g[k / 3][k % 3] = load(w + (k * C + c) * O + o);
        Sandwich(Tile<m>::G, g, Tile<m>::G, u);
        #pragma GCC unroll 36
        for (int e = 0; e < W::E; ++e) store(U + (e * C + c) * O + o, u[e / W::a][e % W::a]);
      }
  });
}

// V[E][kBlock][C] = B^T d B of the input tiles of the block from tile `t0` (zero outside the image
// and from tile `end` on)
template <int m>
void InputTransform(const float* x, const Geometry& g, int64_t C, int64_t t0, int64_t end, float* V) {
  using W = Winograd<m>;
  const int64_t plane = W::kBlock * C;
  // where each element of a tile reads its channels: a pixel, or a row of zeros outside the image
  // (no test per element and channel group)
  float* zeros = Sized(Scratch(kZeros), C);
  std::fill(zeros, zeros + C, 0.f);
  for (int64_t k = 0; k < W::kBlock; ++k) {
    const int64_t t = t0 + k;
    int64_t i = 0, r = 0, q = 0;
    if (t < end) g.where(t, &i, &r, &q);
    const float* from[W::E];
    for (int e = 0; e < W::E; ++e) {
      const int64_t row = m * r - 1 + e / W::a, col = m * q - 1 + e % W::a;
      const bool inside = t < end && row >= 0 && row < g.h && col >= 0 && col < g.w;
      from[e] = inside ? x + ((i * g.h + row) * g.w + col) * C : zeros;
    }
    for (int64_t c = 0; c < C; c += L) {
      vf d[W::a][W::a], v[W::a][W::a];
      #pragma GCC unroll 36
      for (int e = 0; e < W::E; ++e) d[e / W::a][e % W::a] = load(from[e] + c);
      InputTile<m>(d, v);
      #pragma GCC unroll 36
      for (int e = 0; e < W::E; ++e) store(V + e * plane + k * C + c, v[e / W::a][e % W::a]);
    }
  }
}

// What the backward pass needs of a pooling window, one byte per channel: bit k (k = 2a + b) is set
// where output (a, b) is one of the window's maxima, bit 4 + k where its pre-activation is >= 0.
// A sixteenth of the full-size activation it replaces, which was written and read back through memory.
constexpr int kPositive = 4;

// Winograd correlation of x (N, H, W, C) with U, + bias and LeakyReLU per output tile: p gets each
// pooling window's maximum and `mask` (if not null) its byte above.
template <int m, bool kMask>
void WinogradForward(const Parts& parts, const float* x, const float* U, const float* bias, float slope,
                     const Geometry& g, int64_t C, int64_t O, float* p, uint8_t* mask) {
  using W = Winograd<m>;
  const float minus_inf = -__builtin_inff();
  parts.Run([&](int part) {
    float* V = Sized(Scratch(kV), W::E * W::kBlock * C);
    // M[tile][O / L][E][L]: the products written so that each output tile's transform reads its E
    // elements from consecutive memory at fixed offsets (as [E][tile][O], their 36 addresses were
    // computed at run time and kept on the stack)
    float* M = Sized(Scratch(kM), W::E * W::kBlock * O);
    const auto [first, last] = parts.Range(g.blocks(W::kBlock), part);
    for (int64_t block = first; block < last; ++block) {
      const int64_t t0 = block * W::kBlock;
      const int64_t rows = std::min(W::kBlock, g.tiles - t0);  // the last block's products end at the last tile
      InputTransform<m>(x, g, C, t0, g.tiles, V);
      for (int e = 0; e < W::E; ++e)
        Gemm<false, false>(V + e * W::kBlock * C, C, U + e * C * O, O, M + e * L, W::E * O, rows, O, C, W::E * L);
      for (int64_t k = 0; k < rows; ++k) {
        int64_t i, r, q;
        g.where(t0 + k, &i, &r, &q);
        for (int64_t o = 0; o < O; o += L) {
          const float* tile = M + (k * O + o) * W::E;  // its E elements of channels o..o+L-1, side by side
          vf mv[W::a][W::a], out[m][m];
          #pragma GCC unroll 36
          for (int e = 0; e < W::E; ++e) mv[e / W::a][e % W::a] = load(tile + e * L);
          OutputTile<m>(mv, out);
          const vf bv = load(bias + o);
          #pragma GCC unroll 36
          for (int wr = 0; wr < m / 2; ++wr)
            #pragma GCC unroll 36
            for (int wc = 0; wc < m / 2; ++wc) {
              const int64_t pr = (m / 2) * r + wr, pc = (m / 2) * q + wc;  // the pooling window
              if (pr >= g.ph || pc >= g.pw) continue;
              const int64_t at = ((i * g.ph + pr) * g.pw + pc) * O + o;
              if constexpr (!kMask) {
                // Adding a finite bias and LeakyReLU are non-decreasing (float rounding included):
                // applied once, to the maximum of the products, they give the maximum of the
                // activations. (An infinite bias can differ: -inf + inf is NaN on the other path.)
                const bool down = 2 * pr + 1 < g.h, right = 2 * pc + 1 < g.w;  // the window's second row, column
                const vf* top = out[2 * wr] + 2 * wc;
                const vf* bottom = out[2 * wr + 1] + 2 * wc;
                vf best = right ? vmax(top[0], top[1]) : top[0];
                if (down) best = vmax(best, right ? vmax(bottom[0], bottom[1]) : bottom[0]);
                store(p + at, leaky(best + bv, slope));
                continue;
              }
              vf pre[2][2], ys[2][2], best = splat(minus_inf);
              #pragma GCC unroll 36
              for (int u = 0; u < 2; ++u)
                #pragma GCC unroll 36
                for (int v = 0; v < 2; ++v) {
                  pre[u][v] = out[2 * wr + u][2 * wc + v] + bv;
                  // outside the image: -inf, never a maximum
                  ys[u][v] = 2 * pr + u < g.h && 2 * pc + v < g.w ? leaky(pre[u][v], slope) : splat(minus_inf);
                  best = vmax(best, ys[u][v]);
                }
              store(p + at, best);
              if (kMask) {
                vi bits{};
                #pragma GCC unroll 36
                for (int b = 0; b < 4; ++b)
                  bits |= ((ys[b / 2][b % 2] == best) & (1 << b)) |
                          ((pre[b / 2][b % 2] >= 0) & (1 << (kPositive + b)));
                *reinterpret_cast<vb*>(mask + at) = __builtin_convertvector(bits, vb);
              }
            }
        }
      }
    }
  });
}

// The gradient before the LeakyReLU of pooling window (pr, pc) of image i from its mask byte, for
// channels o..o+L-1: the window's gradient split evenly among its maxima, times the slope where the
// pre-activation was negative; zero elsewhere.
inline void MaskGrad(const uint8_t* mask, const float* dp, const Geometry& g, int64_t O, int64_t i, int64_t pr,
                     int64_t pc, int64_t o, float slope, vf out[2][2]) {
  const int64_t at = ((i * g.ph + pr) * g.pw + pc) * O + o;
  const vi bits = __builtin_convertvector(*reinterpret_cast<const vb*>(mask + at), vi);
  const vi count = (bits & 1) + ((bits >> 1) & 1) + ((bits >> 2) & 1) + ((bits >> 3) & 1);
  const vf share = load(dp + at) / __builtin_convertvector(count, vf);
  #pragma GCC unroll 36
  for (int k = 0; k < 4; ++k) {
    const vf scaled = ((bits >> (kPositive + k)) & 1) != 0 ? share : share * slope;
    out[k / 2][k % 2] = ((bits >> k) & 1) != 0 ? scaled : vf{};
  }
}

// The whole backward pass in one sweep over the tiles, each part over whole images (the input
// gradient's tiles overlap, and no two threads may add into the same pixel): per tile the gradient
// before the LeakyReLU from the mask (d, m x m), its Winograd-domain form Z = A d A^T, and per element
// e the two products of the algorithm's gradient: dU[e] += V[e]^T Z[e] (weights) and dV[e] = Z[e] U[e]^T
// (input), then dx += B dV B^T, added into the overlapping (m + 2) x (m + 2) input tile. UT: the weight
// transform with swapped channel axes, [E][O][C].
template <int m>
void WinogradBackward(const Parts& parts, const float* x, const float* UT, const uint8_t* mask, const float* dp,
                      float slope, const Geometry& g, int64_t C, int64_t O, float* dx, float* dw, float* db) {
  using W = Winograd<m>;
  static constexpr Matrix<W::a, W::a> B = Transposed(Tile<m>::BT);
  const int count = parts.count();
  const size_t per_part = W::E * C * O + O;
  const int64_t per_image = g.th * g.tw;
  float* partial = Sized(Scratch(kPartial), count * per_part);
  parts.Run([&](int part) {
    float* myU = partial + part * per_part;
    float* myB = myU + W::E * C * O;
    std::fill(myU, myU + per_part, 0.f);
    float* V = Sized(Scratch(kV), W::E * W::kBlock * C);
    float* Z = Sized(Scratch(kM), W::E * W::kBlock * O);
    const auto [first_image, last_image] = parts.Range(g.n, part);
    std::fill(dx + first_image * g.h * g.w * C, dx + last_image * g.h * g.w * C, 0.f);
    const int64_t end = last_image * per_image;
    for (int64_t t0 = first_image * per_image; t0 < end; t0 += W::kBlock) {
      InputTransform<m>(x, g, C, t0, end, V);
      for (int64_t k = 0; k < W::kBlock; ++k) {
        const int64_t t = t0 + k;
        int64_t i = 0, r = 0, q = 0;
        if (t < end) g.where(t, &i, &r, &q);
        for (int64_t o = 0; o < O; o += L) {
          vf d[m][m] = {};
          if (t < end) {
            vf sum{};
            #pragma GCC unroll 36
            for (int wr = 0; wr < m / 2; ++wr)
              #pragma GCC unroll 36
              for (int wc = 0; wc < m / 2; ++wc) {
                const int64_t pr = (m / 2) * r + wr, pc = (m / 2) * q + wc;
                if (pr >= g.ph || pc >= g.pw) continue;
                vf window[2][2];
                MaskGrad(mask, dp, g, O, i, pr, pc, o, slope, window);
                #pragma GCC unroll 36
                for (int u = 0; u < 2; ++u)
                  #pragma GCC unroll 36
                  for (int v = 0; v < 2; ++v) {
                    d[2 * wr + u][2 * wc + v] = window[u][v];
                    sum += window[u][v];
                  }
              }
            store(myB + o, load(myB + o) + sum);
          }
          // the output transform's transpose
          vf z[W::a][W::a];
          Sandwich(W::A.at, d, W::A.at, z);
          #pragma GCC unroll 36
          for (int e = 0; e < W::E; ++e) store(Z + (e * W::kBlock + k) * O + o, z[e / W::a][e % W::a]);
        }
      }
      for (int e = 0; e < W::E; ++e) {
        float* Ve = V + e * W::kBlock * C;
        const float* Ze = Z + e * W::kBlock * O;
        Gemm<true, true>(Ve, C, Ze, O, myU + e * C * O, O, C, O, W::kBlock);
        Gemm<false, false>(Ze, O, UT + e * O * C, C, Ve, C, W::kBlock, C, O);  // V[e] is done with: dV[e]
      }
      // the input transform's transpose, added into the input tiles
      for (int64_t k = 0; k < W::kBlock && t0 + k < end; ++k) {
        int64_t i, r, q;
        g.where(t0 + k, &i, &r, &q);
        for (int64_t c = 0; c < C; c += L) {
          vf dv[W::a][W::a], dd[W::a][W::a];
          #pragma GCC unroll 36
          for (int e = 0; e < W::E; ++e) dv[e / W::a][e % W::a] = load(V + (e * W::kBlock + k) * C + c);
          Sandwich(B.at, dv, B.at, dd);
          #pragma GCC unroll 36
          for (int e = 0; e < W::E; ++e) {
            const int64_t row = m * r - 1 + e / W::a, col = m * q - 1 + e % W::a;
            if (row < 0 || row >= g.h || col < 0 || col >= g.w) continue;
            float* at = dx + ((i * g.h + row) * g.w + col) * C + c;
            store(at, load(at) + dd[e / W::a][e % W::a]);
          }
        }
      }
    }
  });
  // dw = G^T dU G, the weight transform's transpose, of the parts' sum; L output channels at a time,
  // in parallel over the input channels (run on the calling thread alone it cost as much as a block)
  parts.Run([&](int part) {
    const auto [first, last] = parts.Range(C, part);
    for (int64_t c = first; c < last; ++c)
      for (int64_t o = 0; o < O; o += L) {
        vf u[W::a][W::a], out[3][3];
        #pragma GCC unroll 36
        for (int e = 0; e < W::E; ++e) {
          vf sum{};
          for (int k = 0; k < count; ++k) sum += load(partial + k * per_part + (e * C + c) * O + o);
          u[e / W::a][e % W::a] = sum;
        }
        Sandwich(W::GT.at, u, W::GT.at, out);
        #pragma GCC unroll 36
        for (int k = 0; k < 9; ++k) store(dw + (k * C + c) * O + o, out[k / 3][k % 3]);
      }
  });
  for (int64_t o = 0; o < O; o += L) {
    vf sum{};
    for (int k = 0; k < count; ++k) sum += load(partial + k * per_part + W::E * C * O + o);
    store(db + o, sum);
  }
}

// ---- direct form for few input channels (conv1) ---------------------------------------------------

struct Direct {
  int64_t h, w, c, o, th, tw, ph, pw;  // ph x pw: the zero-padded copy of one image
  Direct(int64_t h_, int64_t w_, int64_t c_, int64_t o_)
      : h(h_), w(w_), c(c_), o(o_), th((h_ + 1) / 2), tw((w_ + 1) / 2), ph(2 * th + 2), pw(2 * tw + 2) {}
};

// Image i of x with a zero border (one row/column before, enough after for every pooling window),
// so that a window's 4x4 input patch is read without bounds checks.
void Pad(const float* x, const Direct& s, int64_t i, float* P) {
  std::fill(P, P + s.ph * s.pw * s.c, 0.f);
  for (int64_t row = 0; row < s.h; ++row)
    std::memcpy(P + ((row + 1) * s.pw + 1) * s.c, x + (i * s.h + row) * s.w * s.c, s.w * s.c * sizeof(float));
}

// The weights of output channels o..o+L NV, packed [9][C][NV][L], and their biases [NV][L]: a
// window's loads then sit at fixed offsets from one pointer (with the strides read at run time the
// address arithmetic outweighed the products).
template <int NV>
void Pack(const float* w, const float* bias, const Direct& s, int64_t o, float* packed) {
  for (int64_t kc = 0; kc < 9 * s.c; ++kc)
    for (int j = 0; j < NV; ++j) store(packed + (kc * NV + j) * L, load(w + kc * s.o + o + L * j));
  for (int j = 0; j < NV; ++j) store(packed + (9 * s.c * NV + j) * L, load(bias + o + L * j));
}

// The 2x2 pre-activations of pooling window (r, q) for the packed channels, from the padded image;
// NV groups of L channels share the patch's broadcasts. kC: the input channels where known at
// compile time (1: conv1), else 0.
template <int NV, int kC>
inline void DirectWindow(const float* P, const float* packed, const Direct& s, int64_t r, int64_t q,
                         vf pre[NV][2][2]) {
  const int64_t C = kC ? kC : s.c, row = s.pw * C;
  for (int j = 0; j < NV; ++j) {
    const vf bv = load(packed + (9 * C * NV + j) * L);
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) pre[j][a][b] = bv;
  }
  const float* corner = P + (2 * r * s.pw + 2 * q) * C;
  for (int64_t c = 0; c < C; ++c) {
    vf patch[4][4];
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) patch[a][b] = splat(corner[a * row + b * C + c]);
    for (int k = 0; k < 9; ++k)
      for (int j = 0; j < NV; ++j) {
        const vf wv = load(packed + ((k * C + c) * NV + j) * L);
        for (int a = 0; a < 2; ++a)
          for (int b = 0; b < 2; ++b) pre[j][a][b] += patch[a + k / 3][b + k % 3] * wv;
      }
  }
}

// The gradient before the LeakyReLU of window (r, q) of image i, channels o..o+L NV, recomputed from
// the padded image: JAX's tie rule on the window's outputs (positions outside the image never count,
// and get zero).
template <int NV, int kC>
inline void DirectWindowGrad(const float* P, const float* packed, const float* dp, float slope, const Direct& s,
                             int64_t i, int64_t r, int64_t q, int64_t o, vf d[NV][2][2]) {
  vf pre[NV][2][2];
  DirectWindow<NV, kC>(P, packed, s, r, q, pre);
  for (int j = 0; j < NV; ++j) {
    vf ys[2][2], best = splat(-__builtin_inff()), count{};
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) {
        const bool inside = 2 * r + a < s.h && 2 * q + b < s.w;
        ys[a][b] = inside ? leaky(pre[j][a][b], slope) : splat(-__builtin_inff());
        best = vmax(best, ys[a][b]);
      }
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) count += ys[a][b] == best ? splat(1.f) : vf{};
    const vf share = load(dp + ((i * s.th + r) * s.tw + q) * s.o + o + L * j) / count;
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b)
        d[j][a][b] = ys[a][b] == best ? share * (pre[j][a][b] >= 0 ? splat(1.f) : splat(slope)) : vf{};
  }
}

template <int N>
using Int = std::integral_constant<int, N>;

// body(Int<NV>, Int<kC>, o) for every group of output channels: 2 L at a time, then L; kC = 1 where
// the image has one channel.
template <typename F>
void ByChannels(const Direct& s, F&& body) {
  int64_t o = 0;
  if (s.c == 1) {
    for (; o + 2 * L <= s.o; o += 2 * L) body(Int<2>{}, Int<1>{}, o);
    for (; o < s.o; o += L) body(Int<1>{}, Int<1>{}, o);
  } else {
    for (; o + 2 * L <= s.o; o += 2 * L) body(Int<2>{}, Int<0>{}, o);
    for (; o < s.o; o += L) body(Int<1>{}, Int<0>{}, o);
  }
}

// body(Int<NV>, Int<kC>, packed, o, r, q) for every pooling window (r, q) and group of output
// channels o..o+L NV, the group's weights packed once
template <typename F>
void ByWindow(const float* w, const float* bias, const Direct& s, F&& body) {
  alignas(64) float packed[(9 * 15 + 1) * 32];  // Pack's most: 15 input channels, 32 output channels
  ByChannels(s, [&](auto nv, auto kc, int64_t o) {
    Pack<decltype(nv)::value>(w, bias, s, o, packed);
    for (int64_t r = 0; r < s.th; ++r)
      for (int64_t q = 0; q < s.tw; ++q) body(nv, kc, packed, o, r, q);
  });
}

// dpre of image i, (2 th) x (2 tw) x O (zero outside the image)
void DirectImageGrad(const float* P, const float* w, const float* bias, const float* dp, float slope, const Direct& s,
                     int64_t i, float* D) {
  ByWindow(w, bias, s, [&](auto nv, auto kc, const float* packed, int64_t o, int64_t r, int64_t q) {
    constexpr int NV = decltype(nv)::value;
    vf d[NV][2][2];
    DirectWindowGrad<NV, decltype(kc)::value>(P, packed, dp, slope, s, i, r, q, o, d);
    for (int j = 0; j < NV; ++j)
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) store(D + ((2 * r + a) * 2 * s.tw + 2 * q + b) * s.o + o + L * j, d[j][a][b]);
  });
}

void DirectForward(const Parts& parts, const float* x, const float* w, const float* bias, float slope, int64_t N,
                   const Direct& s, float* p) {
  parts.Run([&](int part) {
    float* P = Sized(Scratch(kImage), s.ph * s.pw * s.c);
    const auto [first, last] = parts.Range(N, part);
    for (int64_t i = first; i < last; ++i) {
      Pad(x, s, i, P);
      ByWindow(w, bias, s, [&](auto nv, auto kc, const float* packed, int64_t o, int64_t r, int64_t q) {
        constexpr int NV = decltype(nv)::value;
        vf pre[NV][2][2];
        DirectWindow<NV, decltype(kc)::value>(P, packed, s, r, q, pre);
        // LeakyReLU is increasing: applied once, to the maximum of the pre-activations, it gives the
        // maximum of the activations
        const bool rows = 2 * r + 1 < s.h, cols = 2 * q + 1 < s.w;  // the window's second row, column
        for (int j = 0; j < NV; ++j) {
          vf best = pre[j][0][0];
          if (cols) best = vmax(best, pre[j][0][1]);
          if (rows) best = vmax(best, cols ? vmax(pre[j][1][0], pre[j][1][1]) : pre[j][1][0]);
          store(p + ((i * s.th + r) * s.tw + q) * s.o + o + L * j, leaky(best, slope));
        }
      });
    }
  });
}

// dw[ka][kb][c] += sum over pixels of P[pixel + (ka, kb)][c] * dpre[pixel] for one image, channels
// o..o+L NV: per input channel the 9 NV sums stay in registers through the whole image, and each
// broadcast of the image serves NV groups of L output channels.
template <int NV, int kC>
inline void PixelSums(const float* P, const float* D, const Direct& s, int64_t rows, int64_t cols, int64_t o,
                      float* dw) {
  const int64_t C = kC ? kC : s.c;
  for (int64_t c = 0; c < C; ++c) {
    vf acc[9][NV] = {};
    for (int64_t row = 0; row < rows; ++row) {
      const float* image = P + row * s.pw * C + c;  // the 3 x cols window rows from `row` on
      const float* grad = D + row * cols * s.o + o;
      for (int64_t col = 0; col < cols; ++col) {
        vf d[NV];
        for (int j = 0; j < NV; ++j) d[j] = load(grad + col * s.o + L * j);
        for (int k = 0; k < 9; ++k) {
          const vf v = splat(image[((k / 3) * s.pw + col + k % 3) * C]);
          for (int j = 0; j < NV; ++j) acc[k][j] += v * d[j];
        }
      }
    }
    for (int k = 0; k < 9; ++k)
      for (int j = 0; j < NV; ++j) {
        float* at = dw + (k * C + c) * s.o + o + L * j;
        store(at, load(at) + acc[k][j]);
      }
  }
}

void DirectWeightGrad(const Parts& parts, const float* x, const float* w, const float* bias, const float* dp,
                      float slope, int64_t N, const Direct& s, float* dw, float* db) {
  const int count = parts.count();
  const size_t per_part = (9 * s.c + 1) * s.o;
  float* partial = Sized(Scratch(kPartial), count * per_part);
  std::fill(partial, partial + count * per_part, 0.f);
  const int64_t rows = 2 * s.th, cols = 2 * s.tw;
  parts.Run([&](int part) {
    float* mine = partial + part * per_part;
    float* P = Sized(Scratch(kImage), s.ph * s.pw * s.c);
    float* D = Sized(Scratch(kGradient), rows * cols * s.o);
    const auto [first, last] = parts.Range(N, part);
    for (int64_t i = first; i < last; ++i) {
      Pad(x, s, i, P);
      DirectImageGrad(P, w, bias, dp, slope, s, i, D);
      for (int64_t o = 0; o < s.o; o += L) {
        vf sum{};
        for (int64_t px = 0; px < rows * cols; ++px) sum += load(D + px * s.o + o);
        store(mine + 9 * s.c * s.o + o, load(mine + 9 * s.c * s.o + o) + sum);
      }
      ByChannels(s, [&](auto nv, auto kc, int64_t o) {
        // 9 NS sums, NS vectors of the gradient and a broadcast in registers: all NV groups where they fit
        constexpr int NV = decltype(nv)::value, NS = 10 * NV + 1 <= kRegisters ? NV : 1;
        for (int j = 0; j < NV; j += NS) PixelSums<NS, decltype(kc)::value>(P, D, s, rows, cols, o + L * j, mine);
      });
    }
  });
  for (size_t j = 0; j < per_part; ++j) {
    float sum = 0.f;
    for (int k = 0; k < count; ++k) sum += partial[k * per_part + j];
    (j < size_t(9 * s.c * s.o) ? dw[j] : db[j - 9 * s.c * s.o]) = sum;
  }
}

// dx (rarely wanted: the network's input gradient): per image dpre, then back through the kernel
void DirectInputGrad(const Parts& parts, const float* x, const float* w, const float* bias, const float* dp,
                     float slope, int64_t N, const Direct& s, float* dx) {
  const int64_t cols = 2 * s.tw;
  parts.Run([&](int part) {
    float* P = Sized(Scratch(kImage), s.ph * s.pw * s.c);
    float* D = Sized(Scratch(kGradient), 2 * s.th * cols * s.o);
    const auto [first, last] = parts.Range(N, part);
    for (int64_t i = first; i < last; ++i) {
      Pad(x, s, i, P);
      DirectImageGrad(P, w, bias, dp, slope, s, i, D);
      for (int64_t row = 0; row < s.h; ++row)
        for (int64_t col = 0; col < s.w; ++col)
          for (int64_t c = 0; c < s.c; ++c) {
            vf acc{};
            for (int ka = 0; ka < 3; ++ka)
              for (int kb = 0; kb < 3; ++kb) {
                const int64_t orow = row - ka + 1, ocol = col - kb + 1;
                if (orow < 0 || orow >= s.h || ocol < 0 || ocol >= s.w) continue;
                for (int64_t o = 0; o < s.o; o += L)
                  acc += load(D + (orow * cols + ocol) * s.o + o) * load(w + ((ka * 3 + kb) * s.c + c) * s.o + o);
              }
            float sum = 0.f;
            for (int l = 0; l < L; ++l) sum += acc[l];
            dx[((i * s.h + row) * s.w + col) * s.c + c] = sum;
          }
    }
  });
}

// ---- a Winograd call: the weight transform, then the pass --------------------------------------

struct Dims {
  int64_t n, h, w, c, o;
  std::vector<int64_t> image(int64_t channels) const { return {n, h, w, channels}; }
  std::vector<int64_t> pooled() const { return {n, (h + 1) / 2, (w + 1) / 2, o}; }
  std::vector<int64_t> kernel() const { return {3, 3, c, o}; }
  std::vector<int64_t> bias() const { return {o}; }
};

// The weight transforms of the last weights each calling thread evaluated with, per tile and shape:
// evaluation runs batch after batch with the same weights, and the transform with the pass's wait
// for it took a fifth of conv3's time at batch 64 (x86-64-v3 build, g++ 12 -O3, 2 threads: 1.13 ms a
// call with it, 0.88 ms without, in a C++ timing loop of Forward<4> on the 2-core development
// machine, 2026-12-03). A hit needs the weights bitwise equal to the copy kept, whatever buffer they
// are in.
struct TransformCache {
  struct Entry {
    int m = 0;
    int64_t c = 0, o = 0;
    std::vector<float> w;
    Buffer64 U;  // 64-byte aligned as the products' loads want it
  };
  static constexpr int kEntries = 4;  // one per (m, C, O): the network has two such layers
  Entry entries[kEntries];
  int next = 0;  // the entry a new shape takes

  template <int m>
  const float* Get(const Parts& parts, const float* w, int64_t C, int64_t O) {
    const size_t n = 9 * C * O;
    Entry* entry = nullptr;
    for (auto& e : entries)
      if (e.m == m && e.c == C && e.o == O) entry = &e;
    if (entry && (n == 0 || std::memcmp(entry->w.data(), w, n * sizeof(float)) == 0)) return entry->U.data;
    if (!entry) {
      entry = &entries[next];
      next = (next + 1) % kEntries;
    }
    entry->m = 0;  // unusable until filled again: what follows may throw
    entry->c = C, entry->o = O;
    float* U = Sized(entry->U, Winograd<m>::E * C * O);
    entry->w.assign(w, w + n);
    WeightTransform<m>(parts, w, C, O, false, U);
    entry->m = m;
    return U;
  }
};

template <int m>
void Forward(ffi::ThreadPool* pool, const Dims& d, const float* x, const float* w, const float* b, float slope,
             float* p, uint8_t* mask) {
  const Parts parts(pool, kFine);
  if (!mask) {
    thread_local TransformCache cache;
    const float* U = cache.Get<m>(parts, w, d.c, d.o);
    WinogradForward<m, false>(parts, x, U, b, slope, Geometry(d.n, d.h, d.w, m), d.c, d.o, p, nullptr);
    return;
  }
  float* U = Sized(Scratch(kU), Winograd<m>::E * d.c * d.o);
  WeightTransform<m>(parts, w, d.c, d.o, false, U);
  WinogradForward<m, true>(parts, x, U, b, slope, Geometry(d.n, d.h, d.w, m), d.c, d.o, p, mask);
}

template <int m>
void Backward(ffi::ThreadPool* pool, const Dims& d, const float* x, const float* w, const uint8_t* mask,
              const float* dp, float slope, float* dx, float* dw, float* db) {
  const Parts parts(pool), fine(pool, kFine);
  float* UT = Sized(Scratch(kU), Winograd<m>::E * d.c * d.o);
  WeightTransform<m>(fine, w, d.c, d.o, true, UT);
  WinogradBackward<m>(parts, x, UT, mask, dp, slope, Geometry(d.n, d.h, d.w, m), d.c, d.o, dx, dw, db);
}

#ifndef FUSED_CONV_KERNELS_ONLY
// ---- FFI handlers -------------------------------------------------------------------------------

using Buffer = ffi::Buffer<ffi::F32>;
using Result = ffi::ResultBuffer<ffi::F32>;

template <typename T>
bool Is(const T& buffer, const std::vector<int64_t>& shape) {
  auto d = buffer.dimensions();
  return std::vector<int64_t>(d.begin(), d.end()) == shape;
}

// x (N, H, W, C) and w (3, 3, C, O) define the shapes; the slope must be positive (the study's
// LeakyReLU; no other was tested).
ffi::Error Check(const Buffer& x, const Buffer& w, float slope, bool winograd, Dims* d) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 4 || wd.size() != 4 || wd[0] != 3 || wd[1] != 3 || wd[2] != xd[3])
    return ffi::Error::InvalidArgument("fused conv: expected x (N, H, W, C) and w (3, 3, C, O)");
  *d = Dims{xd[0], xd[1], xd[2], xd[3], wd[3]};
  if (d->o % 16 || (winograd && d->c % 16))
    return ffi::Error::InvalidArgument("fused conv: channels must be multiples of 16 (input channels too, Winograd)");
  if (!winograd && d->c >= 16)  // the direct form's packed weights are sized for fewer
    return ffi::Error::InvalidArgument("fused conv: the direct form takes fewer than 16 input channels");
  if (!(slope > 0.f)) return ffi::Error::InvalidArgument("fused conv: the LeakyReLU slope must be positive");
  return ffi::Error::Success();
}

ffi::Error Shapes(bool ok) {
  if (ok) return ffi::Error::Success();
  return ffi::Error::InvalidArgument("fused conv: an argument's shape does not fit x and w");
}

template <typename F>
ffi::Error Guarded(F&& kernel) {
  try {
    kernel();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("fused conv: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error DirectFwd(ffi::ThreadPool pool, Buffer x, Buffer w, Buffer b, float slope, Result p) {
  Dims d;
  if (auto e = Check(x, w, slope, false, &d); e.failure()) return e;
  if (auto e = Shapes(Is(b, d.bias()) && Is(*p, d.pooled())); e.failure()) return e;
  return Guarded([&] {
    DirectForward(Parts(&pool, kFine), x.typed_data(), w.typed_data(), b.typed_data(), slope, d.n,
                  Direct(d.h, d.w, d.c, d.o), p->typed_data());
  });
}

ffi::Error DirectBwdW(ffi::ThreadPool pool, Buffer x, Buffer w, Buffer b, Buffer dp, float slope, Result dw,
                      Result db) {
  Dims d;
  if (auto e = Check(x, w, slope, false, &d); e.failure()) return e;
  if (auto e = Shapes(Is(b, d.bias()) && Is(dp, d.pooled()) && Is(*dw, d.kernel()) && Is(*db, d.bias()));
      e.failure())
    return e;
  return Guarded([&] {
    DirectWeightGrad(Parts(&pool), x.typed_data(), w.typed_data(), b.typed_data(), dp.typed_data(), slope, d.n,
                     Direct(d.h, d.w, d.c, d.o), dw->typed_data(), db->typed_data());
  });
}

ffi::Error DirectBwdX(ffi::ThreadPool pool, Buffer x, Buffer w, Buffer b, Buffer dp, float slope, Result dx) {
  Dims d;
  if (auto e = Check(x, w, slope, false, &d); e.failure()) return e;
  if (auto e = Shapes(Is(b, d.bias()) && Is(dp, d.pooled()) && Is(*dx, d.image(d.c))); e.failure()) return e;
  return Guarded([&] {
    DirectInputGrad(Parts(&pool, kFine), x.typed_data(), w.typed_data(), b.typed_data(), dp.typed_data(), slope, d.n,
                    Direct(d.h, d.w, d.c, d.o), dx->typed_data());
  });
}

// The Winograd tile m (2 or 4): fused.py chooses it per shape.
ffi::Error CheckTile(int32_t tile) {
  if (tile == 2 || tile == 4) return ffi::Error::Success();
  return ffi::Error::InvalidArgument("fused conv: the Winograd tile must be 2 or 4");
}

ffi::Error WinoFwd(ffi::ThreadPool pool, Buffer x, Buffer w, Buffer b, float slope, int32_t tile, Result p,
                   ffi::ResultBuffer<ffi::U8> mask) {
  Dims d;
  if (auto e = Check(x, w, slope, true, &d); e.failure()) return e;
  if (auto e = CheckTile(tile); e.failure()) return e;
  if (auto e = Shapes(Is(b, d.bias()) && Is(*p, d.pooled()) && Is(*mask, d.pooled())); e.failure()) return e;
  return Guarded([&] {
    (tile == 4 ? Forward<4> : Forward<2>)(&pool, d, x.typed_data(), w.typed_data(), b.typed_data(), slope,
                                          p->typed_data(), mask->typed_data());
  });
}

ffi::Error WinoInfer(ffi::ThreadPool pool, Buffer x, Buffer w, Buffer b, float slope, int32_t tile, Result p) {
  Dims d;
  if (auto e = Check(x, w, slope, true, &d); e.failure()) return e;
  if (auto e = CheckTile(tile); e.failure()) return e;
  if (auto e = Shapes(Is(b, d.bias()) && Is(*p, d.pooled())); e.failure()) return e;
  return Guarded([&] {
    (tile == 4 ? Forward<4> : Forward<2>)(&pool, d, x.typed_data(), w.typed_data(), b.typed_data(), slope,
                                          p->typed_data(), nullptr);
  });
}

ffi::Error WinoBwd(ffi::ThreadPool pool, Buffer x, Buffer w, ffi::Buffer<ffi::U8> mask, Buffer dp, float slope,
                   int32_t tile, Result dx, Result dw, Result db) {
  Dims d;
  if (auto e = Check(x, w, slope, true, &d); e.failure()) return e;
  if (auto e = CheckTile(tile); e.failure()) return e;
  if (auto e = Shapes(Is(mask, d.pooled()) && Is(dp, d.pooled()) && Is(*dx, d.image(d.c)) && Is(*dw, d.kernel()) &&
                      Is(*db, d.bias()));
      e.failure())
    return e;
  return Guarded([&] {
    (tile == 4 ? Backward<4> : Backward<2>)(&pool, d, x.typed_data(), w.typed_data(), mask.typed_data(),
                                            dp.typed_data(), slope, dx->typed_data(), dw->typed_data(),
                                            db->typed_data());
  });
}

#endif  // FUSED_CONV_KERNELS_ONLY

}  // namespace

#ifndef FUSED_CONV_KERNELS_ONLY
#define ARG .Arg<ffi::Buffer<ffi::F32>>()
#define RET .Ret<ffi::Buffer<ffi::F32>>()
#define SLOPE .Attr<float>("slope")
#define TILE .Attr<int32_t>("tile")
#define BIND ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedDirectForward, DirectFwd, BIND ARG ARG ARG SLOPE RET);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedDirectBackwardWeights, DirectBwdW, BIND ARG ARG ARG ARG SLOPE RET RET);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedDirectBackwardData, DirectBwdX, BIND ARG ARG ARG ARG SLOPE RET);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedWinogradForward, WinoFwd,
                              BIND ARG ARG ARG SLOPE TILE RET .Ret<ffi::Buffer<ffi::U8>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedWinogradInference, WinoInfer, BIND ARG ARG ARG SLOPE TILE RET);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedWinogradBackward, WinoBwd,
                              BIND ARG ARG .Arg<ffi::Buffer<ffi::U8>>() ARG SLOPE TILE RET RET RET);

#undef ARG
#undef RET
#undef SLOPE
#undef TILE
#undef BIND
#endif  // FUSED_CONV_KERNELS_ONLY
