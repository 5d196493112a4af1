// The MAC recurrence of lowprec.numerics.mac as one fused CPU kernel (loaded by native.py).
//
// For every batch entry, C[i, j] = s_{ceil(K / b)} with
//     s_0 = 0,  s_{c+1} = Q_acc(s_c + sum_{k in block c} Q_prod(A[i, k] B[k, j])),
// blocks of b consecutive k in increasing order. A and B hold float32 values (any strides),
// so every product is exact in float64; block sums are float64 FMA chains in increasing k
// (exact under the condition mac.py states), Q_prod / Q_acc the rounding kernel of
// kernel.py (round_kernel on the float64 container) ported operation for operation.
//
// Operands are float32 views given by element offsets (Operand), so im2col's windows are
// read in place. K is cut into chunks of whole blocks; per chunk B is packed into float64
// panels of NR columns [panel][k][NR] (zero-padded); each MR x NR tile of C reads its MR
// rows of A in place (widened as they are read) and keeps its running sums and block sums
// in registers through the chunk's blocks. C holds the running sums between chunks, as
// float64, or as float32 (OT) when the accumulator's values are float32's. Tiles are
// shared among OpenMP threads (torch's own runtime: the library is loaded after it).
#include <cstdint>
#include <cstring>
#include <vector>

#include "round8.h"

namespace {

using namespace lowprec_f64;

constexpr int MR = 5;
constexpr int NR = 16;
constexpr int64_t CHUNK = 512;  // about the k of one chunk (B panel 64 KiB)

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

constexpr int NV = NR / 8;  // vectors per tile row

inline v8d load(const double* p) { v8d v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(double* p, v8d v) { std::memcpy(p, &v, sizeof v); }

// An operand X[e, i, k] = base[batch[e] + rows[i] + cols[k]] (offsets in elements): any
// strided view, including im2col's windows, without a copy.
struct Operand {
  const float* base;
  const int64_t *batch, *rows, *cols;
};

struct Args {
  Operand a, b;  // a: [batch, m, k], b: [batch, k, n]
  void* c;  // [batch, m, n] contiguous, float64 or float32 (OT)
  int64_t batch, m, n, k, block;
  const int32_t* seeds;  // [batch, blocks, 2] for a stochastic accumulator
  int64_t si, sj;  // output (i, j)'s index into the random stream: i si + j sj
};

// One MR x NR tile through the blocks of one chunk: acc (MR x NR running sums) updated.
template <int AM, int PM>
inline void tile(const float* const* ap, const int64_t* acols, const double* bp, int64_t kc,
                 int64_t block, v8d acc[MR][NV], const Rule& ra, const Rule& rp,
                 const int32_t* seeds, int64_t i0, int64_t j0, int64_t si, int64_t sj) {
  v8l lane;
  for (int j = 0; j < 8; ++j) lane[j] = j;
  for (int64_t k0 = 0, c = 0; k0 < kc; k0 += block, ++c) {
    const int64_t k1 = min64(k0 + block, kc);
    v8d s[MR][NV] = {};
    for (int64_t k = k0; k < k1; ++k) {
      v8d bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = load(bp + k * NR + 8 * v);
      const int64_t off = acols[k];
      for (int r = 0; r < MR; ++r) {
        const double ak = ap[r][off];
        for (int v = 0; v < NV; ++v) {
          if (PM == NONE) s[r][v] += ak * bv[v];
          else s[r][v] += round8<PM>(ak * bv[v], rp, splat(0));
        }
      }
    }
    v8l s0 = splat(0), s1 = splat(0);
    if (AM == STOCHASTIC) {
      s0 = splat(uint32_t(seeds[2 * c]));
      s1 = splat(uint32_t(seeds[2 * c + 1]));
    }
    for (int r = 0; r < MR; ++r) {
      for (int v = 0; v < NV; ++v) {
        v8l h = splat(0);
        if (AM == STOCHASTIC)
          h = lowbias32(((i0 + r) * si + (j0 + 8 * v + lane) * sj) ^ s0) ^ s1;
        acc[r][v] = round8<AM>(acc[r][v] + s[r][v], ra, h);
      }
    }
  }
}

template <int AM, int PM, typename OT>
void run(const Args& x, const Rule& ra, const Rule& rp, int threads) {
  const int64_t chunk = x.block >= CHUNK ? x.block : (CHUNK / x.block) * x.block;
  const int64_t panels = (x.n + NR - 1) / NR, rtiles = (x.m + MR - 1) / MR;
  const int64_t nblocks = (x.k + x.block - 1) / x.block;
  const int64_t kmax = x.k < chunk ? x.k : chunk;
  std::vector<double> bpack(size_t(panels * kmax * NR));
  for (int64_t e = 0; e < x.batch; ++e) {
    const float* a = x.a.base + x.a.batch[e];
    const float* b = x.b.base + x.b.batch[e];
    OT* c = static_cast<OT*>(x.c) + e * x.m * x.n;
    const int32_t* seeds = x.seeds ? x.seeds + e * nblocks * 2 : nullptr;
    for (int64_t k0 = 0; k0 < x.k; k0 += chunk) {
      const int64_t kc = min64(chunk, x.k - k0);
      double* bpk = bpack.data();
#pragma omp parallel num_threads(threads)
      {
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; ++p) {
          for (int64_t k = 0; k < kc; ++k) {
            double* dst = bpk + (p * kc + k) * NR;
            const float* src = b + x.b.rows[k0 + k];
            for (int j = 0; j < NR; ++j) {
              const int64_t col = p * NR + j;
              dst[j] = col < x.n ? src[x.b.cols[col]] : 0.0;
            }
          }
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < rtiles * panels; ++t) {
          const int64_t rt = t / panels, p = t % panels;
          const int64_t i0 = rt * MR, j0 = p * NR;
          const int64_t rows = min64(MR, x.m - i0), cols = min64(NR, x.n - j0);
          const float* src[MR];  // rows past the end repeat row i0 (their sums are dropped)
          for (int r = 0; r < MR; ++r) src[r] = a + x.a.rows[i0 + (r < rows ? r : 0)];
          double tmp[MR][NR] = {};  // s_0 = 0, else the running sums of the last chunk
          if (k0 > 0)
            for (int r = 0; r < rows; ++r)
              for (int j = 0; j < cols; ++j) tmp[r][j] = c[(i0 + r) * x.n + j0 + j];
          v8d acc[MR][NV];
          for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = load(&tmp[r][8 * v]);
          tile<AM, PM>(src, x.a.cols + k0, bpk + p * kc * NR, kc, x.block, acc, ra, rp,
                       seeds ? seeds + 2 * (k0 / x.block) : nullptr, i0, j0, x.si, x.sj);
          for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NV; ++v) store(&tmp[r][8 * v], acc[r][v]);
          for (int r = 0; r < rows; ++r)
            for (int j = 0; j < cols; ++j) c[(i0 + r) * x.n + j0 + j] = OT(tmp[r][j]);
        }
      }
    }
  }
}

template <int AM, typename OT>
int dispatch_product(const Args& x, const Rule& ra, const Rule& rp, int pmode, int threads) {
  switch (pmode) {
    case NONE: run<AM, NONE, OT>(x, ra, rp, threads); return 0;
    case NEAREST: run<AM, NEAREST, OT>(x, ra, rp, threads); return 0;
    case NEAREST_ADD: run<AM, NEAREST_ADD, OT>(x, ra, rp, threads); return 0;
    default: return 1;
  }
}

template <int AM>
int dispatch_output(const Args& x, const Rule& ra, const Rule& rp, int pmode, int out_float,
                    int threads) {
  return out_float ? dispatch_product<AM, float>(x, ra, rp, pmode, threads)
                   : dispatch_product<AM, double>(x, ra, rp, pmode, threads);
}

}  // namespace

extern "C" {

// Returns 0, or 1 for a combination of modes this build has no kernel for.
int lowprec_mac(const float* a, const int64_t* a_batch, const int64_t* a_rows,
                const int64_t* a_cols, const float* b, const int64_t* b_batch,
                const int64_t* b_rows, const int64_t* b_cols, void* c, int out_float,
                int64_t batch, int64_t m, int64_t n, int64_t k, int64_t block,
                const int64_t* acc_rule, const int32_t* acc_flags, int amode,
                const int64_t* prod_rule, const int32_t* prod_flags, int pmode,
                const int32_t* seeds, int64_t si, int64_t sj, int threads) {
  Args x{{a, a_batch, a_rows, a_cols}, {b, b_batch, b_rows, b_cols}, c, batch, m, n, k,
         block, seeds, si, sj};
  Rule ra{}, rp{};
  std::memcpy(ra.g, acc_rule, sizeof ra.g);
  ra.saturate = acc_flags[0]; ra.parity_from_exponent = acc_flags[1]; ra.flush = acc_flags[2];
  ra.symmetric = acc_flags[3]; ra.negative_zero = acc_flags[4];
  if (pmode != NONE) {
    std::memcpy(rp.g, prod_rule, sizeof rp.g);
    rp.saturate = prod_flags[0]; rp.parity_from_exponent = prod_flags[1];
    rp.flush = prod_flags[2]; rp.symmetric = prod_flags[3]; rp.negative_zero = prod_flags[4];
  }
  switch (amode) {
    case NEAREST: return dispatch_output<NEAREST>(x, ra, rp, pmode, out_float, threads);
    case NEAREST_ADD: return dispatch_output<NEAREST_ADD>(x, ra, rp, pmode, out_float, threads);
    case NEAREST_AWAY: return dispatch_output<NEAREST_AWAY>(x, ra, rp, pmode, out_float, threads);
    case TOWARD_ZERO: return dispatch_output<TOWARD_ZERO>(x, ra, rp, pmode, out_float, threads);
    case DOWN: return dispatch_output<DOWN>(x, ra, rp, pmode, out_float, threads);
    case UP: return dispatch_output<UP>(x, ra, rp, pmode, out_float, threads);
    case ODD: return dispatch_output<ODD>(x, ra, rp, pmode, out_float, threads);
    case STOCHASTIC: return dispatch_output<STOCHASTIC>(x, ra, rp, pmode, out_float, threads);
    default: return 1;
  }
}

}  // extern "C"
