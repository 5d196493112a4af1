// Rounding of float32 tensors on the CPU (loaded by native.py): per-block power-of-two
// scaling (lowprec.numerics.slicescale), y = 2**X round(x 2**-X) per block, X =
// clamp(floor(log2 amax) - emax + margin, -127, 127) from the block's largest finite
// magnitude (-127 for an all-zero block); and plain rounding (cast.round_measured: X = 0,
// the stochastic index an element's flat position, kernel.round_values').
//
// x is float32, contiguous, viewed as (outer, n, inner); blocks are runs of `size`
// consecutive positions along n (the last one ragged), one block per (outer, inner) lane.
// Each block is rounded onto the format's grid shifted by X (slicescale._shifted_grid: the
// same codes as scaling, rounding and unscaling; the caller admits only formats whose
// shifted grids hold in float32), by kernel.round_kernel on 16 int32 lanes ported operation
// for operation (float32 container: P = 23, bias = 127, width 32; subnormal inputs, as the
// shifted grid may reach below float32's normals), every mode (slicescale computes the
// directed ones and "odd" in float64, so only plain rounding uses those). With inner == 1 a block is contiguous and
// its 16 lanes share one grid; otherwise each lane is its own block (16 consecutive inner
// positions) with its own grid. Stochastic rounding hashes each element's index in the
// layout slicescale's torch path uses (axis moved last, blocks padded to `size`):
//     o * inner * nb * size + i * nb * size + position along n
// with kernel.random_bits' int32 stream, so both paths draw the same bits.
//
// NEAREST_FLOAT, nearest-even for the formats the caller admits (signed floating point with
// 1 <= m <= 22 mantissa bits, subnormals, no exponent parity, symmetric): the scaled way,
// y = 2**X r(x 2**-X), each step a float32 operation. x 2**-X is exact unless it falls
// below float32's normals, where its true value is far below half the format's smallest
// step (2**qmin >= 2**-22) and both round to (signed) zero. r: at or above the format's
// smallest normal 2**emin, the float's significand rounded to m bits by adding
// 2**(22 - m) - 1 plus its last kept bit and clearing the 23 - m dropped bits (a carry
// runs into the exponent); below it, (|v| + 2**(qmin + 23)) - 2**(qmin + 23), whose sum
// has spacing 2**qmin: the FPU's nearest-even. The product by 2**X is exact (a shiftable
// grid), so these are round16's bits in about half its operations. That needs the FPU's
// defaults: with subnormals flushed (torch.set_flush_denormal) or another rounding
// direction in MXCSR, and off x86, NEAREST runs instead.
#include <cstdint>
#include <cstring>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include "round8.h"  // enum Mode

namespace {

typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef float v16f __attribute__((vector_size(64)));
constexpr int L = 16;
constexpr int32_t INF = 0x7F800000;

// kernel.grid_constants (float32 container) and rand_mask; Shape flags; the exponent rule.
struct Rule {
  int32_t g[10];
  int32_t saturate, parity_from_exponent, flush, symmetric, negative_zero, nan_block;
  int32_t emax, margin, seed0, seed1;
};

// The grid of one lane's block, shifted by its exponent X (slicescale._shifted_grid).
struct Grid {
  v16i g0, g1, g2, g3, g4, g6, g7, g8;
};

inline v16i splat(int32_t v) { return v16i{} + v; }

inline v16i bits_of(v16f f) {
  v16i b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

inline v16f float_of(v16i b) {
  v16f f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// 2**X exactly as a float32 bit pattern, X in [-127, 127] (2**-127 is subnormal: 1 << 22).
inline v16i exp2_bits(v16i x) { return x > -127 ? (x + 127) << 23 : splat(1 << 22); }

// X of each lane's largest finite magnitude bits a (floor rule): floor(log2 a) from the
// exponent field, or from the leading bit of a subnormal, then - emax + margin, clamped.
inline v16i exponent(v16i a, const Rule& r) {
  v16i e = (a >> 23) - 127;
  v16i lead = (bits_of(__builtin_convertvector(a, v16f)) >> 23) - 127 - 149;  // a < 2**23
  e = (a >> 23) == 0 ? lead : e;
  v16i x = e - r.emax + r.margin;
  x = x < -127 ? splat(-127) : x;
  x = x > 127 ? splat(127) : x;
  return a > 0 ? x : splat(-127);
}

inline Grid shifted(v16i x, const Rule& r) {
  v16f p2 = float_of(exp2_bits(x));
  auto times = [&](int32_t bits) { return bits_of(float_of(splat(bits)) * p2); };
  return {splat(r.g[0]), r.g[1] + x, r.g[2] - x, times(r.g[3]), times(r.g[4]), r.g[6] + x,
          r.g[7] + x, times(r.g[8])};
}

inline v16u lowbias32(v16u x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  return x ^ (x >> 16);
}

// kernel.round_kernel on 16 float32 bit patterns b (Shape: subnormal_inputs, signed).
template <int MODE, bool SATURATE>
inline v16i round16(v16i b, const Grid& g, const Rule& r, v16u index) {
  const v16i u = b & 0x7FFFFFFF;
  v16i efc = u >> 23;
  efc = efc < 1 ? splat(1) : efc;
  v16i dt = g.g1 - efc;
  dt = dt > g.g0 ? dt : g.g0;
  v16i ev = (bits_of(__builtin_convertvector(u, v16f)) >> 23) - (127 + 23 - 1);
  ev = (u >> 23) == 0 ? ev : efc;
  v16i lo = g.g1 - 1, hi = g.g0 + ev - 1;
  dt = ev < 1 ? (lo > hi ? lo : hi) : dt;
  if (r.flush) dt = ev < g.g6 ? g.g7 - efc : dt;
  const v16i d = dt < 30 ? dt : splat(30);
  const v16i s = u - ((efc - 1) << 23);
  const v16i f = s >> d;
  const v16i rem = s - (f << d);
  v16i up;  // 0 or -1
  if (MODE == NEAREST || MODE == ODD) {
    const v16i odd = (r.parity_from_exponent
                      ? ((d + efc + g.g2) & (f != 0 ? splat(1) : splat(0))) : f) & 1;
    if (MODE == NEAREST) up = ((rem << 1) | odd) > (splat(1) << d);
    else up = (rem != 0) & (odd == 0);
  } else if (MODE == NEAREST_AWAY) {
    up = (rem << 1) >= (splat(1) << d);
  } else if (MODE == TOWARD_ZERO) {
    up = splat(0);
  } else if (MODE == UP) {
    up = (rem != 0) & (b >= 0);
  } else if (MODE == DOWN) {
    up = (rem != 0) & (b < 0);
  } else {  // STOCHASTIC: kernel._stochastic_up with a = 30
    const v16i h = (v16i)(lowbias32(index ^ (uint32_t)r.seed0) ^ (uint32_t)r.seed1);
    v16i sh = dt - d;
    sh = sh < 31 ? sh : splat(31);
    const v16i top = (rem << (30 - d)) >> sh;
    const v16i mask = splat(r.g[9]);
    up = ((top & mask) + (h & mask)) >= (1 << 30);
  }
  v16i res = d > 23 ? (up != 0 ? g.g8 : splat(0)) : u - rem + ((up & 1) << d);
  const v16i limit = r.symmetric ? g.g3 : (b < 0 ? g.g4 : g.g3);
  const v16i over = res > limit;
  if (SATURATE || MODE == NEAREST || MODE == NEAREST_AWAY || MODE == STOCHASTIC) {
    res = over ? (SATURATE ? limit : splat(r.g[5])) : res;
  } else {  // directed: away from zero gives inf/NaN, toward zero the limit
    v16i away = u == INF;
    if (MODE == UP) away |= over & (b >= 0);
    if (MODE == DOWN) away |= over & (b < 0);
    res = over ? limit : res;
    res = away ? splat(r.g[5]) : res;
  }
  v16i sign = b & (int32_t)0x80000000;
  if (!r.negative_zero) sign = res == 0 ? splat(0) : sign;
  res |= sign;
  return u > INF ? b : res;
}

// NEAREST_FLOAT (top of file) of the float32 bit patterns b in a block of exponent x.
template <bool SATURATE>
inline v16i nearest_float(v16i b, v16i x, const Rule& r) {
  const int32_t drop = r.g[0], qmin = r.g[1] - 150;
  const v16f v = float_of(b) * float_of(exp2_bits(-x));
  const v16i a = bits_of(v) & 0x7FFFFFFF;
  const v16i normal = (a + ((1 << (drop - 1)) - 1) + ((a >> drop) & 1)) & -(1 << drop);
  const v16f magic = float_of(splat((qmin + 23 + 127) << 23));
  const v16i sub = bits_of((float_of(a) + magic) - magic);
  v16i res = a < ((qmin + 23 - drop + 127) << 23) ? sub : normal;
  const v16i limit = splat(r.g[3]);
  res = res > limit ? (SATURATE ? limit : splat(r.g[5])) : res;
  res = bits_of(float_of(res | (b & (int32_t)0x80000000)) * float_of(exp2_bits(x)));
  return (b & 0x7FFFFFFF) > INF ? b : res;
}

template <int MODE, bool SATURATE>
inline v16i round_block(v16i b, v16i x, const Grid& g, const Rule& r, v16u index) {
  if (MODE == NEAREST_FLOAT) return nearest_float<SATURATE>(b, x, r);
  return round16<MODE, SATURATE>(b, g, r, index);
}

// The largest lane of v, in every lane.
inline v16i lane_max(v16i v) {
  v = v > __builtin_shuffle(v, (v16i){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7})
          ? v : __builtin_shuffle(v, (v16i){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  v16i w = __builtin_shuffle(v, (v16i){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
  v = v > w ? v : w;
  w = __builtin_shuffle(v, (v16i){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
  v = v > w ? v : w;
  w = __builtin_shuffle(v, (v16i){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
  return v > w ? v : w;
}

// The count (<= 16) floats at p, zeros in the lanes beyond.
inline v16i load(const float* p, int count) {
  v16i b;
  if (count == L) {
    std::memcpy(&b, p, sizeof b);
    return b;
  }
  b = splat(0);
  std::memcpy(&b, p, 4 * count);
  return b;
}

inline void store(float* p, v16i b, int count) {
  if (count == L) std::memcpy(p, &b, sizeof b);
  else std::memcpy(p, &b, 4 * count);
}

// The largest finite magnitude (bits) and whether a non-finite element occurs, per lane.
inline void scan(v16i b, v16i& amax, v16i& bad) {
  const v16i u = b & 0x7FFFFFFF;
  const v16i fin = u < INF;
  const v16i v = u & fin;
  amax = amax > v ? amax : v;
  bad |= ~fin;
}

struct Layout {
  const float* x;
  float* y;
  int64_t outer, n, inner, size;
};

constexpr int32_t QNAN = 0x7FC00000;

// Blocks along contiguous rows (inner == 1): one block per (o, block), lanes along it. A
// job takes GROUP blocks of a row in two passes, their exponents first, then the roundings,
// so that the blocks' dependency chains (reduction, exponent) overlap in the core.
constexpr int64_t GROUP = 64;

template <int MODE, bool SATURATE>
void rows(const Layout& t, const Rule& r, int threads) {
  const int64_t nb = (t.n + t.size - 1) / t.size;
  const int64_t span = GROUP * t.size;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t o = 0; o < t.outer; o++)
  for (int64_t j0 = 0; j0 < nb * t.size; j0 += span) {
    const int64_t end = t.n - j0 < span ? t.n : j0 + span;
    int32_t xs[GROUP], bad[GROUP];
    for (int64_t k0 = j0; k0 < end; k0 += t.size) {
      const int64_t len = end - k0 < t.size ? end - k0 : t.size;
      v16i amax = splat(0), nonfinite = splat(0);
      for (int64_t k = 0; k < len; k += L) {
        const int c = len - k < L ? (int)(len - k) : L;
        scan(load(t.x + o * t.n + k0 + k, c), amax, nonfinite);
      }
      xs[(k0 - j0) / t.size] = exponent(lane_max(amax), r)[0];
      bad[(k0 - j0) / t.size] = r.nan_block && lane_max(nonfinite & 1)[0];
    }
    for (int64_t k0 = j0; k0 < end; k0 += t.size) {
      const int64_t len = end - k0 < t.size ? end - k0 : t.size;
      float* yb = t.y + o * t.n + k0;
      if (bad[(k0 - j0) / t.size]) {
        for (int64_t k = 0; k < len; k++) std::memcpy(yb + k, &QNAN, 4);
        continue;
      }
      const v16i x = splat(xs[(k0 - j0) / t.size]);
      const Grid g = MODE == NEAREST_FLOAT ? Grid{} : shifted(x, r);
      const v16u base = (v16u){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} +
                        (uint32_t)(o * nb * t.size + k0);
      for (int64_t k = 0; k < len; k += L) {
        const int c = len - k < L ? (int)(len - k) : L;
        store(yb + k, round_block<MODE, SATURATE>(load(t.x + o * t.n + k0 + k, c), x, g, r,
                                                  base + (uint32_t)k), c);
      }
    }
  }
}

// Blocks across rows (inner > 1): lane l of a job is the block at inner position i0 + l.
template <int MODE, bool SATURATE>
void columns(const Layout& t, const Rule& r, int threads) {
  const int64_t nb = (t.n + t.size - 1) / t.size;
  const int64_t ni = (t.inner + L - 1) / L;
  const int64_t row = nb * t.size;  // the index's stride of an inner position
#pragma omp parallel for collapse(3) schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t o = 0; o < t.outer; o++)
  for (int64_t k0 = 0; k0 < row; k0 += t.size)
  for (int64_t i0 = 0; i0 < ni * L; i0 += L) {
    const int64_t len = t.n - k0 < t.size ? t.n - k0 : t.size;
    const int c = t.inner - i0 < L ? (int)(t.inner - i0) : L;
    const int64_t at = (o * t.n + k0) * t.inner + i0;
    const float* xb = t.x + at;
    float* yb = t.y + at;
    v16i amax = splat(0), bad = splat(0);
    for (int64_t k = 0; k < len; k++) scan(load(xb + k * t.inner, c), amax, bad);
    const v16i x = exponent(amax, r);
    const Grid g = MODE == NEAREST_FLOAT ? Grid{} : shifted(x, r);
    const v16i nan = r.nan_block ? bad : splat(0);
    v16u base = (v16u){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    base = base * (uint32_t)row + (uint32_t)((o * t.inner + i0) * row + k0);
    for (int64_t k = 0; k < len; k++) {
      const v16i y = round_block<MODE, SATURATE>(load(xb + k * t.inner, c), x, g, r,
                                                 base + (uint32_t)k);
      store(yb + k * t.inner, nan ? splat(QNAN) : y, c);
    }
  }
}

// No scaling (size == 0): the n elements onto the format's own grid, X = 0.
constexpr int64_t SPAN = 4096;  // elements of a job

template <int MODE, bool SATURATE>
void plain(const Layout& t, const Rule& r, int threads) {
  const Grid g{splat(r.g[0]), splat(r.g[1]), splat(r.g[2]), splat(r.g[3]), splat(r.g[4]),
               splat(r.g[6]), splat(r.g[7]), splat(r.g[8])};
  const v16u lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t j0 = 0; j0 < t.n; j0 += SPAN) {
    const int64_t end = t.n - j0 < SPAN ? t.n : j0 + SPAN;
    for (int64_t k = j0; k < end; k += L) {
      const int c = end - k < L ? (int)(end - k) : L;
      store(t.y + k, round_block<MODE, SATURATE>(load(t.x + k, c), splat(0), g, r,
                                                 lane + (uint32_t)k), c);
    }
  }
}

template <int MODE, bool SATURATE>
void dispatch(const Layout& t, const Rule& r, int threads) {
  if (t.size == 0) plain<MODE, SATURATE>(t, r, threads);
  else if (t.inner == 1) rows<MODE, SATURATE>(t, r, threads);
  else columns<MODE, SATURATE>(t, r, threads);
}

// Whether the calling thread's FPU rounds to nearest-even and keeps subnormals (MXCSR:
// rounding control 0, no FTZ or DAZ), as NEAREST_FLOAT needs.
inline bool default_fpu() {
#if defined(__SSE__)
  return (_mm_getcsr() & 0xE040) == 0;
#else
  return false;
#endif
}

template <int MODE>
void saturating(const Layout& t, const Rule& r, int threads) {
  if (r.saturate) dispatch<MODE, true>(t, r, threads);
  else dispatch<MODE, false>(t, r, threads);
}

int run(const Layout& t, const int32_t* rule, int mode, int threads) {
  Rule r;
  std::memcpy(&r, rule, sizeof r);
  switch (mode) {
    case NEAREST: saturating<NEAREST>(t, r, threads); return 0;
    case NEAREST_AWAY: saturating<NEAREST_AWAY>(t, r, threads); return 0;
    case TOWARD_ZERO: saturating<TOWARD_ZERO>(t, r, threads); return 0;
    case DOWN: saturating<DOWN>(t, r, threads); return 0;
    case UP: saturating<UP>(t, r, threads); return 0;
    case ODD: saturating<ODD>(t, r, threads); return 0;
    case STOCHASTIC: saturating<STOCHASTIC>(t, r, threads); return 0;
    case NEAREST_FLOAT:
      if (default_fpu()) saturating<NEAREST_FLOAT>(t, r, threads);
      else saturating<NEAREST>(t, r, threads);
      return 0;
    default: return 1;
  }
}

}  // namespace

extern "C" {

// rule: kernel.grid_constants + rand_mask (10), then saturate, parity_from_exponent, flush,
// symmetric, negative_zero, nan_block, emax, margin, seed words (two); mode: enum Mode.
// Returns 0, or 1 for a mode it has no kernel for.
int lowprec_block_round(const float* x, float* y, int64_t outer, int64_t n, int64_t inner,
                        int64_t size, const int32_t* rule, int mode, int threads) {
  return run(Layout{x, y, outer, n, inner, size}, rule, mode, threads);
}

// The n elements of x rounded onto the format (no scaling) into y (may be x); the rule as
// above (nan_block, emax and margin unused).
int lowprec_round(const float* x, float* y, int64_t n, const int32_t* rule, int mode,
                  int threads) {
  return run(Layout{x, y, 1, n, 1, 0}, rule, mode, threads);
}

}  // extern "C"
