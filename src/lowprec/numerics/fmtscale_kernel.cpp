// Per-block scales rounded into a number format (NVFP4-style two-level scaling,
// lowprec.numerics.scaling's non-power-of-two path) as one CPU kernel (loaded by native.py).
//
// x is float32, contiguous, viewed as (outer, n, inner); blocks are runs of `size`
// consecutive positions along n (the last one ragged), one block per (outer, inner) pair.
// In float64, operation for operation as scaling.scaled_round and scaling._format_scale
// compute it:
//     a_b = max |x| over the block's finite elements (0 for a block holding a non-finite
//           element when nan_block);
//     g   = float32(max_b a_b / (smax fmax)) widened, or 1 if that is not positive and
//           finite (tensor_scale), else 1;
//     s_b = Q_s((a_b 2**margin) / (fmax g)), smin where that is not positive, times g
//           (NaN for a non-finite block when nan_block);
//     y   = float32(Q(x / s_b) s_b),
// Q_s the scale format's rounding (saturating), Q the element format's, both
// kernel.round_kernel on float64 lanes (round8.h). Stochastic rounding hashes each
// element's index in the layout the torch path rounds (axis moved last, blocks padded):
//     (o * inner + i) * nb * size + position along n.
// Blocks along rows (inner == 1) put 8 consecutive elements of a block in a vector; across
// rows, 8 consecutive inner positions (8 blocks, each with its own scale).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "round8.h"

namespace {

using namespace lowprec_f64;

struct Params {
  Rule elem, scale;
  int32_t scale_mode, nan_block, tensor_scale, seed0, seed1;
  double fmax, smax, smin, margin;  // margin: 2**margin
};

struct Layout {
  const float* x;
  float* y;
  int64_t outer, n, inner, size;
  int64_t nb() const { return (n + size - 1) / size; }
  int64_t len(int64_t k0) const { return n - k0 < size ? n - k0 : size; }
};

constexpr int32_t INF = 0x7F800000;

// Pass 1: each block's largest finite magnitude (float32 bits) and whether it holds a
// non-finite element; block id (o * nb + b) * inner + i. Rows of a block are read whole
// (the inner positions are the vectorised loop).
void scan(const Layout& t, int32_t* amax, int32_t* bad, int threads) {
  const int64_t nb = t.nb();
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t o = 0; o < t.outer; o++)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t k0 = b * t.size, len = t.len(k0);
    int32_t* a = amax + (o * nb + b) * t.inner;
    int32_t* nonfinite = bad + (o * nb + b) * t.inner;
    if (t.inner == 1) {  // a reduction along the row
      const float* row = t.x + o * t.n + k0;
      int32_t m = 0, any = 0;
      for (int64_t k = 0; k < len; k++) {
        int32_t u;
        std::memcpy(&u, row + k, 4);
        u &= 0x7FFFFFFF;
        any |= u >= INF;
        const int32_t v = u < INF ? u : 0;
        m = m > v ? m : v;
      }
      *a = m, *nonfinite = any;
      continue;
    }
    for (int64_t i = 0; i < t.inner; i++) a[i] = 0, nonfinite[i] = 0;
    for (int64_t k = 0; k < len; k++) {
      const float* row = t.x + (o * t.n + k0 + k) * t.inner;
      for (int64_t i = 0; i < t.inner; i++) {
        int32_t u;
        std::memcpy(&u, row + i, 4);
        u &= 0x7FFFFFFF;
        nonfinite[i] |= u >= INF;
        const int32_t v = u < INF ? u : 0;
        a[i] = a[i] > v ? a[i] : v;
      }
    }
  }
}

inline double widen(int32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Q_s of 8 targets (the scale format's rounding mode: down, up or nearest-even).
inline v8d scale_round(v8d v, const Params& p) {
  switch (p.scale_mode) {
    case DOWN: return round8<DOWN>(v, p.scale, splat(0));
    case UP: return round8<UP>(v, p.scale, splat(0));
    default: return round8<NEAREST>(v, p.scale, splat(0));
  }
}

// Pass 2: the block scales s_b, from the amaxes and the tensor scale g.
void scales(const Layout& t, const Params& p, const int32_t* amax, const int32_t* bad,
            double* out, int threads) {
  const int64_t total = t.outer * t.nb() * t.inner;
  double g = 1.0;
  if (p.tensor_scale) {
    int32_t top = 0;  // float32 bits: ordered as the magnitudes
    for (int64_t j = 0; j < total; j++) {
      const int32_t a = p.nan_block && bad[j] ? 0 : amax[j];
      top = a > top ? a : top;
    }
    g = static_cast<float>(widen(top) / (p.smax * p.fmax));
    if (!(g > 0.0 && std::isfinite(g))) g = 1.0;
  }
  const double den = p.fmax * g;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t j0 = 0; j0 < total; j0 += 8) {
    const int c = total - j0 < 8 ? int(total - j0) : 8;
    v8d a = {};
    for (int l = 0; l < c; l++) a[l] = p.nan_block && bad[j0 + l] ? 0.0 : widen(amax[j0 + l]);
    v8d s = scale_round(a * p.margin / den, p);
    s = (s > 0.0 ? s : v8d{} + p.smin) * g;
    for (int l = 0; l < c; l++) out[j0 + l] = p.nan_block && bad[j0 + l] ? NAN : s[l];
  }
}

typedef float v8f __attribute__((vector_size(32)));

inline v8d load8(const float* x, int count) {
  v8f f = {};
  if (count == 8) std::memcpy(&f, x, sizeof f);
  else std::memcpy(&f, x, 4 * count);
  return __builtin_convertvector(f, v8d);
}

inline void store8(float* y, v8d v, int count) {
  const v8f f = __builtin_convertvector(v, v8f);
  if (count == 8) std::memcpy(y, &f, sizeof f);
  else std::memcpy(y, &f, 4 * count);
}

inline v8l hash(v8l index, const Params& p) {
  return lowbias32(index ^ splat(uint32_t(p.seed0))) ^ splat(uint32_t(p.seed1));
}

// Pass 3: y = float32(Q(x / s) s).
template <int M>
void elements(const Layout& t, const Params& p, const double* sc, int threads) {
  const int64_t nb = t.nb(), row = nb * t.size;
  const v8l lane = {0, 1, 2, 3, 4, 5, 6, 7};
  if (t.inner == 1) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t o = 0; o < t.outer; o++)
    for (int64_t b = 0; b < nb; b++) {
      const int64_t k0 = b * t.size, len = t.len(k0);
      const v8d s = v8d{} + sc[o * nb + b];
      for (int64_t k = 0; k < len; k += 8) {
        const int c = len - k < 8 ? int(len - k) : 8;
        const v8d v = load8(t.x + o * t.n + k0 + k, c) / s;
        const v8l h = M == STOCHASTIC ? hash(lane + (o * row + k0 + k), p) : splat(0);
        store8(t.y + o * t.n + k0 + k, round8<M>(v, p.elem, h) * s, c);
      }
    }
    return;
  }
  const int64_t ni = (t.inner + 7) / 8;
#pragma omp parallel for collapse(3) schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t o = 0; o < t.outer; o++)
  for (int64_t b = 0; b < nb; b++)
  for (int64_t q = 0; q < ni; q++) {
    const int64_t k0 = b * t.size, len = t.len(k0), i0 = q * 8;
    const int c = t.inner - i0 < 8 ? int(t.inner - i0) : 8;
    v8d s = v8d{} + 1.0;
    for (int l = 0; l < c; l++) s[l] = sc[(o * nb + b) * t.inner + i0 + l];
    const v8l base = lane * row + (o * t.inner + i0) * row + k0;
    for (int64_t k = 0; k < len; k++) {
      const int64_t at = (o * t.n + k0 + k) * t.inner + i0;
      const v8d v = load8(t.x + at, c) / s;
      const v8l h = M == STOCHASTIC ? hash(base + k, p) : splat(0);
      store8(t.y + at, round8<M>(v, p.elem, h) * s, c);
    }
  }
}

}  // namespace

extern "C" {

// elem, scale: kernel.grid_constants (float64 container) and rand_mask; flags: for each of
// them saturate, parity_from_exponent, flush, symmetric, negative_zero, then scale_mode,
// nan_block, tensor_scale and the two seed words; values: fmax, smax, smin, 2**margin.
// mode: enum Mode, NEAREST_ADD for nearest-even where round8_add applies. Returns 0, or 1
// for a mode it has no kernel for.
int lowprec_fmtscale_round(const float* x, float* y, int64_t outer, int64_t n, int64_t inner,
                           int64_t size, const int64_t* elem, const int64_t* scale,
                           const int32_t* flags, const double* values, int mode, int threads) {
  if (mode < NEAREST || (mode > STOCHASTIC && mode != NEAREST_ADD)) return 1;
  Params p{};
  std::memcpy(p.elem.g, elem, sizeof p.elem.g);
  std::memcpy(p.scale.g, scale, sizeof p.scale.g);
  Rule* rules[2] = {&p.elem, &p.scale};
  for (int k = 0; k < 2; k++) {
    const int32_t* f = flags + 5 * k;
    rules[k]->saturate = f[0];
    rules[k]->parity_from_exponent = f[1];
    rules[k]->flush = f[2];
    rules[k]->symmetric = f[3];
    rules[k]->negative_zero = f[4];
  }
  p.scale_mode = flags[10];
  p.nan_block = flags[11];
  p.tensor_scale = flags[12];
  p.seed0 = flags[13];
  p.seed1 = flags[14];
  p.fmax = values[0];
  p.smax = values[1];
  p.smin = values[2];
  p.margin = values[3];
  const Layout t{x, y, outer, n, inner, size};
  const int64_t total = outer * t.nb() * inner;
  std::vector<int32_t> amax(total);
  std::vector<int32_t> bad(total);
  std::vector<double> sc(total);
  scan(t, amax.data(), bad.data(), threads);
  scales(t, p, amax.data(), bad.data(), sc.data(), threads);
  switch (mode) {
    case NEAREST: elements<NEAREST>(t, p, sc.data(), threads); return 0;
    case NEAREST_AWAY: elements<NEAREST_AWAY>(t, p, sc.data(), threads); return 0;
    case TOWARD_ZERO: elements<TOWARD_ZERO>(t, p, sc.data(), threads); return 0;
    case DOWN: elements<DOWN>(t, p, sc.data(), threads); return 0;
    case UP: elements<UP>(t, p, sc.data(), threads); return 0;
    case ODD: elements<ODD>(t, p, sc.data(), threads); return 0;
    case STOCHASTIC: elements<STOCHASTIC>(t, p, sc.data(), threads); return 0;
    default: elements<NEAREST_ADD>(t, p, sc.data(), threads); return 0;
  }
}

}  // extern "C"
