// The fused CPU kernels (emnist_jax/cnn/fused_conv.cc) against a plain direct convolution, without
// JAX or XLA: the block max_pool_same(leaky_relu(conv3x3_same(x, w) + b)) forward, and its gradients
// dx, dw, db, for the direct form (few input channels) and Winograd F(2x2) and F(4x4), on odd sizes,
// one-pixel sides and tied maxima. Also times each kernel at the study's shapes (--time).
//
//   c++ -std=c++17 -O3 -march=native -pthread tests/native/harness.cc -o harness   (any target, g++ or clang++;
//                                              -O3 as the extension is built, for --time)
//   ./harness                  checks every case; a line per case, exit status 1 where one fails
//   ./harness --time [N [T]]   ms per call of each kernel, batch N (64), T threads (all)
//
// tests/test_native_harness.py builds and runs it natively and, where the cross tools are
// installed, for aarch64 under qemu-user.

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace ffi {
// XLA's intra-op thread pool as the kernels use it: a fixed number of threads taking scheduled tasks.
class ThreadPool {
 public:
  explicit ThreadPool(int64_t threads) {
    for (int64_t k = 0; k < threads; ++k) workers_.emplace_back([this] { Work(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    ready_.notify_all();
    for (auto& worker : workers_) worker.join();
  }
  int64_t num_threads() const { return static_cast<int64_t>(workers_.size()); }
  template <typename F>
  void Schedule(F&& f) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      tasks_.emplace_back(std::forward<F>(f));
    }
    ready_.notify_one();
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }
  std::vector<std::thread> workers_;
  std::deque<std::function<void()>> tasks_;
  std::mutex mutex_;
  std::condition_variable ready_;
  bool stop_ = false;
};
}  // namespace ffi

#define FUSED_CONV_KERNELS_ONLY
#include "../../emnist_jax/cnn/fused_conv.cc"

namespace {

struct Case {
  int64_t n, h, w, c, o;
  int tile;    // 0: the direct form; 2 or 4: Winograd F(tile x tile)
  bool exact;  // small integers (times powers of two): every sum exact, so many maxima tie exactly
  bool blank;  // a blank (zero) border two pixels wide: the windows there tie at the bias
};

struct Block {
  int64_t n, h, w, c, o, ph, pw;
  std::vector<float> x, w_, b, dp;
  Block(const Case& k, std::mt19937& rng)
      : n(k.n), h(k.h), w(k.w), c(k.c), o(k.o), ph((k.h + 1) / 2), pw((k.w + 1) / 2), x(k.n * k.h * k.w * k.c),
        w_(9 * k.c * k.o), b(k.o), dp(k.n * ph * pw * k.o) {
    std::uniform_int_distribution<int> small(-2, 2);
    std::uniform_real_distribution<float> real(-1.f, 1.f);
    auto draw = [&](float scale) { return k.exact ? small(rng) * scale : real(rng); };
    for (int64_t i = 0; i < n; ++i)
      for (int64_t r = 0; r < h; ++r)
        for (int64_t q = 0; q < w; ++q) {
          const bool border = k.blank && (r < 2 || q < 2 || r >= h - 2 || q >= w - 2);
          for (int64_t ci = 0; ci < c; ++ci) x[((i * h + r) * w + q) * c + ci] = border ? 0.f : draw(1.f);
        }
    for (auto& v : w_) v = draw(.25f);
    for (auto& v : b) v = draw(.25f);
    for (auto& v : dp) v = real(rng);
  }
  float X(int64_t i, int64_t r, int64_t q, int64_t ci) const {
    return r < 0 || r >= h || q < 0 || q >= w ? 0.f : x[((i * h + r) * w + q) * c + ci];
  }
  float W(int ka, int kb, int64_t ci, int64_t oc) const { return w_[((ka * 3 + kb) * c + ci) * o + oc]; }
};

// The plain block in double: pre-activations, pooled outputs, and the gradients from dp under JAX's
// rules (a window's gradient split evenly among its maxima; LeakyReLU's branch by pre >= 0).
struct Reference {
  std::vector<double> pre, p, dx, dw, db;
  int64_t ties = 0;  // windows (and channels) with more than one maximum
  Reference(const Block& k, float slope) {
    pre.assign(k.n * k.h * k.w * k.o, 0.);
    p.assign(k.n * k.ph * k.pw * k.o, 0.);
    dx.assign(k.x.size(), 0.);
    dw.assign(k.w_.size(), 0.);
    db.assign(k.o, 0.);
    auto at = [&](int64_t i, int64_t r, int64_t q, int64_t oc) { return ((i * k.h + r) * k.w + q) * k.o + oc; };
    for (int64_t i = 0; i < k.n; ++i)
      for (int64_t r = 0; r < k.h; ++r)
        for (int64_t q = 0; q < k.w; ++q)
          for (int64_t oc = 0; oc < k.o; ++oc) {
            double sum = k.b[oc];
            for (int ka = 0; ka < 3; ++ka)
              for (int kb = 0; kb < 3; ++kb)
                for (int64_t ci = 0; ci < k.c; ++ci) sum += double(k.X(i, r + ka - 1, q + kb - 1, ci)) * k.W(ka, kb, ci, oc);
            pre[at(i, r, q, oc)] = sum;
          }
    auto leaky = [&](double v) { return v >= 0 ? v : v * double(slope); };
    std::vector<double> dpre(pre.size(), 0.);
    for (int64_t i = 0; i < k.n; ++i)
      for (int64_t pr = 0; pr < k.ph; ++pr)
        for (int64_t pc = 0; pc < k.pw; ++pc)
          for (int64_t oc = 0; oc < k.o; ++oc) {
            double best = -INFINITY;
            int count = 0;
            for (int pass = 0; pass < 3; ++pass)
              for (int64_t r = 2 * pr; r < std::min(2 * pr + 2, k.h); ++r)
                for (int64_t q = 2 * pc; q < std::min(2 * pc + 2, k.w); ++q) {
                  const double v = pre[at(i, r, q, oc)], y = leaky(v);
                  if (pass == 0) best = std::max(best, y);
                  else if (pass == 1) count += y == best;
                  else if (y == best)
                    dpre[at(i, r, q, oc)] = k.dp[((i * k.ph + pr) * k.pw + pc) * k.o + oc] / count * (v >= 0 ? 1. : slope);
                }
            p[((i * k.ph + pr) * k.pw + pc) * k.o + oc] = best;
            ties += count > 1;
          }
    for (int64_t i = 0; i < k.n; ++i)
      for (int64_t r = 0; r < k.h; ++r)
        for (int64_t q = 0; q < k.w; ++q)
          for (int64_t oc = 0; oc < k.o; ++oc) {
            const double d = dpre[at(i, r, q, oc)];
            if (d == 0) continue;
            db[oc] += d;
            for (int ka = 0; ka < 3; ++ka)
              for (int kb = 0; kb < 3; ++kb) {
                const int64_t row = r + ka - 1, col = q + kb - 1;
                if (row < 0 || row >= k.h || col < 0 || col >= k.w) continue;
                for (int64_t ci = 0; ci < k.c; ++ci) {
                  dw[((ka * 3 + kb) * k.c + ci) * k.o + oc] += d * k.X(i, row, col, ci);
                  dx[((i * k.h + row) * k.w + col) * k.c + ci] += d * k.W(ka, kb, ci, oc);
                }
              }
          }
  }
};

// max |got - want| over max |want| (over 1 where want is all zero)
double Error(const std::vector<float>& got, const std::vector<double>& want) {
  double worst = 0, scale = 0;
  for (size_t j = 0; j < want.size(); ++j) {
    worst = std::max(worst, std::abs(double(got[j]) - want[j]));
    scale = std::max(scale, std::abs(want[j]));
  }
  return worst / (scale > 0 ? scale : 1.);
}

struct Outputs {
  std::vector<float> p, inferred, dx, dw, db;
};

// The kernels as the FFI handlers call them.
Outputs Run(ffi::ThreadPool& pool, const Case& k, const Block& x, float slope) {
  Outputs out{std::vector<float>(x.dp.size()), std::vector<float>(x.dp.size()), std::vector<float>(x.x.size()),
              std::vector<float>(x.w_.size()), std::vector<float>(x.o)};
  if (k.tile == 0) {
    const Direct s(k.h, k.w, k.c, k.o);
    DirectForward(Parts(&pool, kFine), x.x.data(), x.w_.data(), x.b.data(), slope, k.n, s, out.p.data());
    out.inferred = out.p;
    DirectWeightGrad(Parts(&pool), x.x.data(), x.w_.data(), x.b.data(), x.dp.data(), slope, k.n, s, out.dw.data(),
                     out.db.data());
    DirectInputGrad(Parts(&pool, kFine), x.x.data(), x.w_.data(), x.b.data(), x.dp.data(), slope, k.n, s,
                    out.dx.data());
    return out;
  }
  const Dims d{k.n, k.h, k.w, k.c, k.o};
  std::vector<uint8_t> mask(x.dp.size());
  auto forward = k.tile == 4 ? Forward<4> : Forward<2>;
  auto backward = k.tile == 4 ? Backward<4> : Backward<2>;
  forward(&pool, d, x.x.data(), x.w_.data(), x.b.data(), slope, out.p.data(), mask.data());
  forward(&pool, d, x.x.data(), x.w_.data(), x.b.data(), slope, out.inferred.data(), nullptr);
  backward(&pool, d, x.x.data(), x.w_.data(), mask.data(), x.dp.data(), slope, out.dx.data(), out.dw.data(),
           out.db.data());
  return out;
}

int Check() {
  // F(4x4)'s transforms round to ~1e-6 of the output's scale, and its 6x6 tiles may break exact ties
  // (fused.py's TRAINING_TILE), so it is checked on real-valued data, without ties; the direct form
  // and F(2x2) are exact on small integers, so their ties are exact too.
  const Case cases[] = {
      {3, 7, 5, 1, 48, 0, true, false},  {2, 1, 1, 1, 16, 0, true, false},  {2, 1, 6, 3, 32, 0, true, false},
      {3, 6, 1, 2, 16, 0, true, false},  {2, 9, 8, 1, 32, 0, true, true},   {2, 7, 7, 5, 16, 0, false, false},
      {3, 7, 5, 16, 48, 2, true, false}, {2, 1, 1, 16, 16, 2, true, false}, {2, 9, 2, 32, 64, 2, true, false},
      {1, 14, 14, 32, 64, 2, true, true}, {2, 5, 7, 16, 32, 2, false, false},
      {3, 7, 5, 16, 48, 4, false, false}, {2, 1, 1, 16, 16, 4, false, false}, {2, 9, 3, 32, 64, 4, false, false},
      {1, 14, 14, 32, 64, 4, false, false}, {1, 13, 14, 16, 16, 4, true, true}, {4, 7, 7, 64, 128, 4, false, false},
      // F(4x4) over several blocks of tiles (16 or 18 a block), the last one short
      {5, 7, 7, 32, 48, 4, false, false}, {3, 13, 11, 16, 64, 4, false, false},
  };
  const float slope = 0.1f;
  std::mt19937 rng(7);
  ffi::ThreadPool pool(3);
  int failed = 0;
  std::printf("vector: %d floats, %d registers\n", L, kRegisters);
  for (const Case& k : cases) {
    const Block x(k, rng);
    const Reference want(x, slope);
    const Outputs got = Run(pool, k, x, slope), again = Run(pool, k, x, slope);
    // the same numbers every run: partial sums are split by part, whichever thread runs it
    const bool same = got.p == again.p && got.inferred == again.inferred && got.dx == again.dx &&
                      got.dw == again.dw && got.db == again.db;
    // F(4x4) with exact ties (the last case) is checked forward only: the value of a maximum does not
    // depend on which output holds it
    const bool grads = !(k.tile == 4 && k.exact);
    const double tolerance = k.tile == 4 ? 1e-4 : 1e-5;
    const double errors[] = {Error(got.p, want.p), Error(got.inferred, want.p), grads ? Error(got.dx, want.dx) : 0,
                             grads ? Error(got.dw, want.dw) : 0, grads ? Error(got.db, want.db) : 0};
    bool ok = same;
    for (double e : errors) ok = ok && e <= tolerance;  // false on NaN
    failed += !ok;
    std::printf("%s %s n=%lld h=%lld w=%lld c=%lld o=%lld %s%s, %lld ties: p %.1e inferred %.1e dx %.1e dw %.1e db %.1e%s\n",
                ok ? "ok  " : "FAIL", k.tile ? (k.tile == 2 ? "winograd2" : "winograd4") : "direct   ",
                (long long)k.n, (long long)k.h, (long long)k.w, (long long)k.c, (long long)k.o,
                k.exact ? "exact" : "real", k.blank ? " blank-border" : "", (long long)want.ties, errors[0], errors[1], errors[2],
                errors[3], errors[4], same ? "" : ", not the same numbers in a second run");
  }
  size_t checks = sizeof(cases) / sizeof(cases[0]);
  {  // evaluation keeps the last weights' transform: new weights in the same buffer must not reuse it
    ++checks;
    const Case k{2, 7, 7, 32, 64, 4, false, false};
    Block x(k, rng);
    const Dims d{k.n, k.h, k.w, k.c, k.o};
    std::vector<float> first(x.dp.size()), second(x.dp.size());
    Forward<4>(&pool, d, x.x.data(), x.w_.data(), x.b.data(), slope, first.data(), nullptr);
    x.w_[x.w_.size() / 2] += 0.5f;
    Forward<4>(&pool, d, x.x.data(), x.w_.data(), x.b.data(), slope, second.data(), nullptr);
    const double error = Error(second, Reference(x, slope).p);
    const bool ok = error <= 1e-4 && first != second;
    failed += !ok;
    std::printf("%s winograd4 evaluation with new weights in the same buffer: p %.1e\n", ok ? "ok  " : "FAIL", error);
  }
  {  // evaluation on two threads at once, each with weights of its own: each keeps its own transform
    ++checks;
    const Case k{3, 7, 7, 32, 64, 4, false, false};
    const Block a(k, rng), b(k, rng);
    const Dims d{k.n, k.h, k.w, k.c, k.o};
    std::vector<float> want_a(a.dp.size()), want_b(b.dp.size());
    Forward<4>(&pool, d, a.x.data(), a.w_.data(), a.b.data(), slope, want_a.data(), nullptr);
    Forward<4>(&pool, d, b.x.data(), b.w_.data(), b.b.data(), slope, want_b.data(), nullptr);
    auto repeat = [&](const Block& x, const std::vector<float>& want, bool* same) {
      std::vector<float> got(want.size());
      for (int r = 0; r < 20 && *same; ++r) {
        Forward<4>(&pool, d, x.x.data(), x.w_.data(), x.b.data(), slope, got.data(), nullptr);
        *same = got == want;
      }
    };
    bool same_a = true, same_b = true;
    std::thread other(repeat, std::cref(b), std::cref(want_b), &same_b);
    repeat(a, want_a, &same_a);
    other.join();
    const bool ok = same_a && same_b && want_a != want_b;
    failed += !ok;
    std::printf("%s winograd4 evaluation on two threads at once, different weights: %s\n", ok ? "ok  " : "FAIL",
                ok ? "the same numbers as alone" : "numbers differ from a single caller's");
  }
  std::printf("%s: %d of %zu cases failed\n", failed ? "FAILED" : "passed", failed, checks);
  return failed ? 1 : 0;
}

// Median ms of `repeats` calls of `body` after one warm-up call.
template <typename F>
double Milliseconds(int repeats, F&& body) {
  body();
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    body();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

int Time(int64_t batch, int64_t threads) {
  // the study's convolutions (28x28 images; 32, 64, 128 filters) and the tiles fused.py gives them
  struct Layer {
    const char* name;
    Case k;
    int eval_tile;
  } layers[] = {{"conv1", {batch, 28, 28, 1, 32, 0, false, false}, 0},
                {"conv2", {batch, 14, 14, 32, 64, 2, false, false}, 4},
                {"conv3", {batch, 7, 7, 64, 128, 2, false, false}, 4}};
  std::mt19937 rng(7);
  ffi::ThreadPool pool(threads);
  const float slope = 0.1f;
  std::printf("vector: %d floats, %d registers; batch %lld, %lld threads; median ms per call\n", L, kRegisters,
              (long long)batch, (long long)threads);
  double train = 0, eval = 0;
  for (const auto& layer : layers) {
    const Case& k = layer.k;
    Block x(k, rng);
    std::vector<float> p(x.dp.size()), dx(x.x.size()), dw(x.w_.size()), db(k.o);
    std::vector<uint8_t> mask(x.dp.size());
    const int repeats = 15;
    double fwd, infer, bwd;
    if (k.tile == 0) {
      const Direct s(k.h, k.w, k.c, k.o);
      fwd = infer = Milliseconds(repeats, [&] {
        DirectForward(Parts(&pool, kFine), x.x.data(), x.w_.data(), x.b.data(), slope, k.n, s, p.data());
      });
      bwd = Milliseconds(repeats, [&] {  // the network's input gradient is never asked of conv1
        DirectWeightGrad(Parts(&pool), x.x.data(), x.w_.data(), x.b.data(), x.dp.data(), slope, k.n, s, dw.data(),
                         db.data());
      });
    } else {
      const Dims d{k.n, k.h, k.w, k.c, k.o};
      fwd = Milliseconds(repeats, [&] {
        Forward<2>(&pool, d, x.x.data(), x.w_.data(), x.b.data(), slope, p.data(), mask.data());
      });
      infer = Milliseconds(repeats, [&] {
        Forward<4>(&pool, d, x.x.data(), x.w_.data(), x.b.data(), slope, p.data(), nullptr);
      });
      bwd = Milliseconds(repeats, [&] {
        Backward<2>(&pool, d, x.x.data(), x.w_.data(), mask.data(), x.dp.data(), slope, dx.data(), dw.data(),
                    db.data());
      });
    }
    train += fwd + bwd;
    eval += infer;
    std::printf("%s  forward %7.3f  backward %7.3f  evaluation %7.3f\n", layer.name, fwd, bwd, infer);
  }
  std::printf("all   training %7.3f (%.0f images/s)  evaluation %7.3f (%.0f images/s)\n", train,
              1e3 * batch / train, eval, 1e3 * batch / eval);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--time") {
    const int64_t batch = argc > 2 ? std::atoll(argv[2]) : 64;
    const int64_t threads = argc > 3 ? std::atoll(argv[3]) : std::max(1u, std::thread::hardware_concurrency());
    if (batch < 1 || threads < 1) {
      std::fprintf(stderr, "harness: --time takes a batch and a thread count, both positive\n");
      return 2;
    }
    return Time(batch, threads);
  }
  if (argc > 1) {
    std::fprintf(stderr, "harness: unknown argument %s (usage: harness [--time [batch [threads]]])\n", argv[1]);
    return 2;
  }
  return Check();
}
