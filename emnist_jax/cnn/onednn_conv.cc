// 'same' 3x3 convolutions of the study's CNN through oneDNN, as XLA FFI handlers (CPU).
//
// Built on first use by emnist_jax/cnn/onednn.py (g++ into a cache folder) when the optional
// extra `onednn` is installed; the Python side wraps the three handlers in a jax.custom_vjp.
//
//   onednn_conv_fwd(x NHWC, w HWIO, b O; slope)  -> (y = leaky_relu(conv(x, w) + b, slope) NHWC,
//                                                    p = 2x2/2 'same' max-pool of y)
//   onednn_conv_pool_infer(x, w, b; slope)       -> p only, in cache-sized chunks of the batch (evaluation)
//   pool_leaky_bwd(y, p, dp; slope)               -> dpre: the gradient before the LeakyReLU, with
//                                                    JAX's tie rule (dp split evenly among the maxima)
//   onednn_conv_bwd_data(dy NHWC, w HWIO)        -> dx                                       NHWC
//   onednn_conv_bwd_weights(x NHWC, dy NHWC)     -> (dw HWIO, db O)
//
// Activations stay in NHWC (oneDNN's nhwc: what PyTorch's channels_last uses); weights are
// reordered between HWIO and the layout the primitive picked. Primitives are made once per shape
// and kept; every call runs on a thread-local stream.

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

float* Scratch(size_t bytes, int slot) {
  thread_local std::vector<float> buffers[2];
  auto& buffer = buffers[slot];
  if (buffer.size() * sizeof(float) < bytes) buffer.resize(bytes / sizeof(float) + 1);
  return buffer.data();
}

struct Shape {
  memory::dim n, h, w, c, o;
  auto tuple() const { return std::make_tuple(n, h, w, c, o); }
  bool operator<(const Shape& other) const { return tuple() < other.tuple(); }
  memory::desc src() const { return memory::desc({n, c, h, w}, dt::f32, tag::nhwc); }
  memory::desc dst() const { return memory::desc({n, o, h, w}, dt::f32, tag::nhwc); }
  memory::desc weights(tag t) const { return memory::desc({o, c, 3, 3}, dt::f32, t); }
  memory::desc bias() const { return memory::desc({o}, dt::f32, tag::x); }
};

const memory::dims kStrides{1, 1}, kPad{1, 1};

dnnl::convolution_forward::primitive_desc ForwardDesc(const Shape& s, float slope,
                                                      dnnl::prop_kind kind = dnnl::prop_kind::forward_training) {
  dnnl::post_ops ops;
  ops.append_eltwise(dnnl::algorithm::eltwise_relu, slope, 0.f);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  return dnnl::convolution_forward::primitive_desc(
      Engine(), kind, dnnl::algorithm::convolution_direct, s.src(),
      s.weights(tag::any), s.bias(), s.dst(), kStrides, kPad, kPad, attr);
}

struct Forward {
  dnnl::convolution_forward conv;
  memory::desc weights;
  dnnl::reorder to_weights;   // HWIO -> the primitive's layout
  bool reorder;
};

struct BackwardData {
  dnnl::convolution_backward_data conv;
  memory::desc weights;
  dnnl::reorder to_weights;
  bool reorder;
};

struct BackwardWeights {
  dnnl::convolution_backward_weights conv;
  memory::desc weights;
  dnnl::reorder from_weights;  // the primitive's layout -> HWIO
  bool reorder;
};

template <typename T>
T& Cached(const Shape& s, float slope, T (*make)(const Shape&, float)) {
  static std::mutex mutex;
  static std::map<std::pair<Shape, float>, std::unique_ptr<T>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[{s, slope}];
  if (!entry) entry = std::make_unique<T>(make(s, slope));
  return *entry;
}

// The primitive and, where its weight layout is not HWIO, the reorder between the two: into the
// primitive's layout (`into`), or out of it (the weight gradient).
template <typename Result, typename Primitive, typename Desc>
Result WithWeights(const Desc& pd, const Shape& s, const memory::desc& layout, bool into) {
  auto user = s.weights(tag::hwio);
  bool reorder = layout != user;
  dnnl::reorder r;
  if (reorder)
    r = dnnl::reorder(into ? dnnl::reorder::primitive_desc(Engine(), user, Engine(), layout)
                           : dnnl::reorder::primitive_desc(Engine(), layout, Engine(), user));
  return {Primitive(pd), layout, r, reorder};
}

Forward MakeForward(const Shape& s, float slope) {
  auto pd = ForwardDesc(s, slope);
  return WithWeights<Forward, dnnl::convolution_forward>(pd, s, pd.weights_desc(), true);
}

Forward MakeInference(const Shape& s, float slope) {
  auto pd = ForwardDesc(s, slope, dnnl::prop_kind::forward_inference);
  return WithWeights<Forward, dnnl::convolution_forward>(pd, s, pd.weights_desc(), true);
}

BackwardData MakeBackwardData(const Shape& s, float) {
  auto pd = dnnl::convolution_backward_data::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, s.src(), s.weights(tag::any), s.dst(), kStrides, kPad,
      kPad, ForwardDesc(s, 0.f));
  return WithWeights<BackwardData, dnnl::convolution_backward_data>(pd, s, pd.weights_desc(), true);
}

BackwardWeights MakeBackwardWeights(const Shape& s, float) {
  auto pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, s.src(), s.weights(tag::any), s.bias(), s.dst(), kStrides,
      kPad, kPad, ForwardDesc(s, 0.f));
  return WithWeights<BackwardWeights, dnnl::convolution_backward_weights>(pd, s, pd.diff_weights_desc(), false);
}

ffi::Error Check(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& w, Shape* s) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 4 || wd.size() != 4 || wd[0] != 3 || wd[1] != 3 || wd[2] != xd[3])
    return ffi::Error::InvalidArgument("onednn conv: expected x (N, H, W, C) and w (3, 3, C, O)");
  *s = Shape{xd[0], xd[1], xd[2], xd[3], wd[3]};
  return ffi::Error::Success();
}

memory Wrap(const memory::desc& md, const void* data) {
  return memory(md, Engine(), const_cast<void*>(data));
}

// The weights as primitive `f` reads them: w itself, or w reordered into scratch memory.
template <typename P>
memory WeightsFor(const P& f, const Shape& s, const float* w, dnnl::stream& stream) {
  memory weights = Wrap(s.weights(tag::hwio), w);
  if (!f.reorder) return weights;
  memory blocked = Wrap(f.weights, Scratch(f.weights.get_size(), 0));
  f.to_weights.execute(stream, weights, blocked);
  return blocked;
}


// 2x2/2 max-pool with 'same' padding (a last odd row/column pools alone), one pass over y.
void MaxPool(const float* y, float* p, int64_t n, int64_t h, int64_t w, int64_t c) {
  const int64_t oh = (h + 1) / 2, ow = (w + 1) / 2;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < oh; ++r)
      for (int64_t q = 0; q < ow; ++q) {
        float* out = p + ((i * oh + r) * ow + q) * c;
        const float* first = y + ((i * h + 2 * r) * w + 2 * q) * c;
        for (int64_t k = 0; k < c; ++k) out[k] = first[k];
        for (int64_t dr = 0; dr < 2; ++dr)
          for (int64_t dq = 0; dq < 2; ++dq) {
            if ((dr == 0 && dq == 0) || 2 * r + dr >= h || 2 * q + dq >= w) continue;
            const float* in = y + ((i * h + 2 * r + dr) * w + 2 * q + dq) * c;
            for (int64_t k = 0; k < c; ++k) out[k] = in[k] > out[k] ? in[k] : out[k];
          }
      }
}

ffi::Error PoolLeakyBackward(ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> dp, float slope,
                             ffi::ResultBuffer<ffi::F32> dpre) {
  auto d = y.dimensions();
  if (d.size() != 4) return ffi::Error::InvalidArgument("pool_leaky_bwd: expected y (N, H, W, C)");
  const int64_t n = d[0], h = d[1], w = d[2], c = d[3], oh = (h + 1) / 2, ow = (w + 1) / 2;
  const float* ys = y.typed_data();
  const float* ps = p.typed_data();
  const float* dps = dp.typed_data();
  float* out = dpre->typed_data();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < oh; ++r)
      for (int64_t q = 0; q < ow; ++q) {
        const float* m = ps + ((i * oh + r) * ow + q) * c;
        const float* g = dps + ((i * oh + r) * ow + q) * c;
        float share[512];
        for (int64_t k0 = 0; k0 < c; k0 += 512) {
          const int64_t kn = c - k0 < 512 ? c - k0 : 512;
          for (int64_t k = 0; k < kn; ++k) share[k] = 0.f;
          for (int64_t dr = 0; dr < 2; ++dr)
            for (int64_t dq = 0; dq < 2; ++dq) {
              if (2 * r + dr >= h || 2 * q + dq >= w) continue;
              const float* in = ys + ((i * h + 2 * r + dr) * w + 2 * q + dq) * c + k0;
              for (int64_t k = 0; k < kn; ++k) share[k] += in[k] == m[k0 + k] ? 1.f : 0.f;
            }
          for (int64_t k = 0; k < kn; ++k) share[k] = g[k0 + k] / share[k];
          for (int64_t dr = 0; dr < 2; ++dr)
            for (int64_t dq = 0; dq < 2; ++dq) {
              if (2 * r + dr >= h || 2 * q + dq >= w) continue;
              const int64_t at = ((i * h + 2 * r + dr) * w + 2 * q + dq) * c + k0;
              for (int64_t k = 0; k < kn; ++k) {
                const float v = ys[at + k];
                out[at + k] = v == m[k0 + k] ? share[k] * (v >= 0.f ? 1.f : slope) : 0.f;
              }
            }
        }
      }
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b, float slope,
                       ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> p) {
  Shape s;
  if (auto e = Check(x, w, &s); e.failure()) return e;
  try {
    auto& f = Cached<Forward>(s, slope, MakeForward);
    auto& stream = Stream();
    memory weights = WeightsFor(f, s, w.typed_data(), stream);
    f.conv.execute(stream, {{DNNL_ARG_SRC, Wrap(s.src(), x.typed_data())},
                            {DNNL_ARG_WEIGHTS, weights},
                            {DNNL_ARG_BIAS, Wrap(s.bias(), b.typed_data())},
                            {DNNL_ARG_DST, Wrap(s.dst(), y->typed_data())}});
    stream.wait();
    MaxPool(y->typed_data(), p->typed_data(), s.n, s.h, s.w, s.o);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv forward: ") + e.what());
  }
  return ffi::Error::Success();
}

// Evaluation: the block's pooled output only. The batch goes through in chunks whose full-size
// activation stays in the cache (about 1 MB), so it is never written out to memory.
ffi::Error ConvPoolInference(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b, float slope,
                             ffi::ResultBuffer<ffi::F32> p) {
  Shape s;
  if (auto e = Check(x, w, &s); e.failure()) return e;
  const int64_t per_image = s.h * s.w * s.o;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(s.n, (256 * 1024) / per_image));
  const int64_t in_image = s.h * s.w * s.c, out_image = ((s.h + 1) / 2) * ((s.w + 1) / 2) * s.o;
  try {
    auto& stream = Stream();
    float* y = Scratch(chunk * per_image * sizeof(float), 1);
    memory blocked;
    for (int64_t start = 0; start < s.n; start += chunk) {
      Shape part = s;
      part.n = std::min(chunk, s.n - start);
      auto& f = Cached<Forward>(part, slope, MakeInference);
      if (start == 0 || part.n != chunk) {
        memory weights = Wrap(s.weights(tag::hwio), w.typed_data());
        blocked = weights;
        if (f.reorder) {
          blocked = Wrap(f.weights, Scratch(f.weights.get_size(), 0));
          f.to_weights.execute(stream, weights, blocked);
        }
      }
      f.conv.execute(stream, {{DNNL_ARG_SRC, Wrap(part.src(), x.typed_data() + start * in_image)},
                              {DNNL_ARG_WEIGHTS, blocked},
                              {DNNL_ARG_BIAS, Wrap(s.bias(), b.typed_data())},
                              {DNNL_ARG_DST, Wrap(part.dst(), y)}});
      stream.wait();
      MaxPool(y, p->typed_data() + start * out_image, part.n, s.h, s.w, s.o);
    }
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv inference: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvBackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx) {
  auto dd = dx->dimensions();
  auto wd = w.dimensions();
  if (dd.size() != 4 || wd.size() != 4 || wd[2] != dd[3])
    return ffi::Error::InvalidArgument("onednn conv backward data: expected dx (N, H, W, C) and w (3, 3, C, O)");
  Shape s{dd[0], dd[1], dd[2], dd[3], wd[3]};
  try {
    auto& f = Cached<BackwardData>(s, 0.f, MakeBackwardData);
    auto& stream = Stream();
    memory weights = WeightsFor(f, s, w.typed_data(), stream);
    f.conv.execute(stream, {{DNNL_ARG_DIFF_DST, Wrap(s.dst(), dy.typed_data())},
                            {DNNL_ARG_WEIGHTS, weights},
                            {DNNL_ARG_DIFF_SRC, Wrap(s.src(), dx->typed_data())}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv backward data: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvBackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                               ffi::ResultBuffer<ffi::F32> db) {
  auto xd = x.dimensions();
  auto wd = dw->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || wd[2] != xd[3])
    return ffi::Error::InvalidArgument("onednn conv backward weights: expected x (N, H, W, C), dw (3, 3, C, O)");
  Shape s{xd[0], xd[1], xd[2], xd[3], wd[3]};
  try {
    auto& f = Cached<BackwardWeights>(s, 0.f, MakeBackwardWeights);
    auto& stream = Stream();
    memory user = Wrap(s.weights(tag::hwio), dw->typed_data());
    memory weights = f.reorder ? Wrap(f.weights, Scratch(f.weights.get_size(), 1)) : user;
    f.conv.execute(stream, {{DNNL_ARG_SRC, Wrap(s.src(), x.typed_data())},
                            {DNNL_ARG_DIFF_DST, Wrap(s.dst(), dy.typed_data())},
                            {DNNL_ARG_DIFF_WEIGHTS, weights},
                            {DNNL_ARG_DIFF_BIAS, Wrap(s.bias(), db->typed_data())}});
    if (f.reorder) f.from_weights.execute(stream, weights, user);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv backward weights: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

namespace {
using F32 = ffi::Buffer<ffi::F32>;

// The bindings' shared beginnings: (x, w, b) or (y, p, dp) with the slope, and two buffers.
auto ThreeBuffersAndSlope() { return ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Attr<float>("slope"); }
auto TwoBuffers() { return ffi::Ffi::Bind().Arg<F32>().Arg<F32>(); }
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, ConvForward, ThreeBuffersAndSlope().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnPoolLeakyBackward, PoolLeakyBackward, ThreeBuffersAndSlope().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvPoolInference, ConvPoolInference, ThreeBuffersAndSlope().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardData, ConvBackwardData, TwoBuffers().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardWeights, ConvBackwardWeights, TwoBuffers().Ret<F32>().Ret<F32>());
