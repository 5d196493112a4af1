// kernel.round_kernel on 8 float64 lanes, shared by the C++ kernels of this folder
// (mac_kernel.cpp, fmtscale_kernel.cpp; included, so native.py hashes it with them).
#pragma once
#include <cstdint>

// The kernels' rounding modes: native.MODES in order, then the kernels' own.
enum Mode {
  NEAREST, NEAREST_AWAY, TOWARD_ZERO, DOWN, UP, ODD, STOCHASTIC,
  NONE,           // no rounding (mac_kernel's exact products)
  NEAREST_ADD,    // nearest-even by a float addition (round8_add)
  NEAREST_FLOAT,  // nearest-even by float32 operations (block_kernel.cpp)
};

namespace lowprec_f64 {

// The format's constants (kernel.grid_constants, then rand_mask) and Shape flags.
struct Rule {
  int64_t g[10];
  int32_t saturate, parity_from_exponent, flush, symmetric, negative_zero;
};

typedef double v8d __attribute__((vector_size(64)));
typedef int64_t v8l __attribute__((vector_size(64)));
inline v8l splat(int64_t v) { return v8l{} + v; }

typedef uint64_t v8u __attribute__((vector_size(64)));

// lowbias32 (kernel._lowbias32) on the low 32 bits of each lane, result in the low 32 bits
// (unsigned lanes: the products wrap modulo 2**64, and their low 32 bits are the hash's).
inline v8l lowbias32(v8l v) {
  const v8u lo = v8u{} + 0xFFFFFFFFu;
  v8u x = (v8u)v & lo;
  x ^= x >> 16;
  x = (x * 0x7FEB352Du) & lo;
  x ^= x >> 15;
  x = (x * 0x846CA68Bu) & lo;
  return (v8l)(x ^ (x >> 16));
}

// NEAREST by float arithmetic, for the formats the caller admits (nearest-even, at least 3
// dropped bits, no flush, no exponent parity, symmetric, largest value below 2**900): with
// 2**k the spacing at |x| (k from the same d as round8's), C = 1.5 * 2**(k + 52) has
// spacing 2**k and |x| + C stays in C's binade, so (|x| + C) - C is |x| rounded to
// nearest-even multiples of 2**k (C is an even multiple), exactly; the rest is round8's.
inline v8d round8_add(v8d x, const Rule& r) {
  const int64_t* g = r.g;
  const v8l zero = splat(0), one = splat(1);
  const v8l b = (v8l)x;
  const v8l u = b & INT64_MAX;
  v8l efc = u >> 52;
  efc = efc < one ? one : efc;
  v8l ce = efc + splat(g[0]);
  ce = ce < splat(g[1]) ? splat(g[1]) : ce;
  ce = ce > splat(2046) ? splat(2046) : ce;  // only beyond the format's range
  const v8d c = (v8d)((ce << 52) | splat(int64_t(1) << 51));
  const v8d q = ((v8d)u + c) - c;
  v8l res = (v8l)q;
  const v8l limit = splat(g[3]);
  res = res > limit ? (r.saturate ? limit : splat(g[5])) : res;
  v8l sign = b & INT64_MIN;
  if (!r.negative_zero) sign = res == zero ? zero : sign;
  return (v8d)(u > splat(int64_t(0x7FF) << 52) ? b : res | sign);
}

// kernel.round_kernel on 8 float64 lanes (P = 52, bias = 1023, width 64), operation for
// operation, without the subnormal-input and unsigned variants (the caller falls back for
// those); h: each lane's 32 hash bits (stochastic rounding).
template <int M>
inline v8d round8(v8d x, const Rule& r, v8l h) {
  if (M == NEAREST_ADD) return round8_add(x, r);
  const int64_t* g = r.g;
  const v8l zero = splat(0), one = splat(1);
  const v8l b = (v8l)x;
  const v8l u = b & INT64_MAX;
  const v8l inf = splat(int64_t(0x7FF) << 52);
  v8l efc = u >> 52;
  efc = efc < one ? one : efc;
  v8l d_true = splat(g[1]) - efc;
  d_true = d_true < splat(g[0]) ? splat(g[0]) : d_true;
  if (r.flush) d_true = efc < splat(g[6]) ? splat(g[7]) - efc : d_true;
  const v8l d = d_true > splat(62) ? splat(62) : d_true;
  const v8l s = u - ((efc - one) << 52);
  const v8l f = s >> d;
  const v8l rem = s - (f << d);
  v8l up;  // all ones where the magnitude rounds up
  if (M == NEAREST || M == ODD) {
    const v8l parity = r.parity_from_exponent ? ((d + efc + splat(g[2])) & -(f != zero)) : f;
    const v8l odd = parity & one;
    up = M == NEAREST ? ((rem << 1) | odd) > (one << d) : (rem != zero) & (odd == zero);
  } else if (M == NEAREST_AWAY) {
    up = (rem << 1) >= (one << d);
  } else if (M == TOWARD_ZERO) {
    up = zero;
  } else if (M == UP) {
    up = (rem != zero) & (b >= zero);
  } else if (M == DOWN) {
    up = (rem != zero) & (b < zero);
  } else {  // STOCHASTIC: kernel._stochastic_up with a = 62
    const v8l shift = d_true - d;
    const v8l top = (rem << (splat(62) - d)) >> (shift > splat(63) ? splat(63) : shift);
    const v8l h32 = ((h & splat(0xFFFFFFFF)) ^ splat(0x80000000)) - splat(0x80000000);
    up = ((top & splat(g[9] << 32)) + ((h32 & splat(g[9])) << 32)) >= splat(int64_t(1) << 62);
  }
  v8l res = d > splat(52) ? (up & splat(g[8])) : u - rem + ((up & one) << d);
  const v8l limit = r.symmetric ? splat(g[3]) : (b < zero ? splat(g[4]) : splat(g[3]));
  const v8l over = res > limit;
  if (r.saturate) {
    res = over ? limit : res;
  } else if (M == NEAREST || M == NEAREST_AWAY || M == STOCHASTIC) {
    res = over ? splat(g[5]) : res;
  } else {
    const v8l away = M == UP ? over & (b >= zero) : M == DOWN ? over & (b < zero) : zero;
    res = over ? limit : res;
    res = (away | (u == inf)) ? splat(g[5]) : res;
  }
  v8l sign = b & INT64_MIN;
  if (!r.negative_zero) sign = res == zero ? zero : sign;
  res |= sign;
  return (v8d)(u > inf ? b : res);
}

}  // namespace lowprec_f64
