// The runtime GEMM (include/mpo/runtime_gemm.hpp): row-major products through a column-major BLAS.
#include "mpo/runtime_gemm.hpp"

#include <atomic>
#include <limits>
#include <type_traits>

namespace mpo {

namespace {
std::atomic<SgemmFn> sgemm_fn{nullptr};
std::atomic<DgemmFn> dgemm_fn{nullptr};
std::atomic<long> calls{0};

bool fits(Index v) { return v >= 0 && v <= std::numeric_limits<int>::max(); }
}  // namespace

void set_runtime_gemm(SgemmFn sgemm, DgemmFn dgemm) {
  sgemm_fn.store(sgemm);
  dgemm_fn.store(dgemm);
}

bool has_runtime_gemm() { return sgemm_fn.load() != nullptr && dgemm_fn.load() != nullptr; }

long runtime_gemm_calls() { return calls.load(); }

template <class T>
bool runtime_gemm(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc,
                  bool accumulate) {
  if (!(fits(m) && fits(n) && fits(k) && fits(lda) && fits(ldb) && fits(ldc))) return false;
  if (m == 0 || n == 0) return true;
  // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: the same buffers, the operands swapped.
  const int mm = static_cast<int>(n), nn = static_cast<int>(m), kk = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const char no = 'N';
  const T one = 1, beta = accumulate ? 1 : 0;
  if constexpr (std::is_same_v<T, float>) {
    const SgemmFn f = sgemm_fn.load();
    if (f == nullptr) return false;
    f(&no, &no, &mm, &nn, &kk, &one, b, &la, a, &lb, &beta, c, &lc);
  } else {
    const DgemmFn f = dgemm_fn.load();
    if (f == nullptr) return false;
    f(&no, &no, &mm, &nn, &kk, &one, b, &la, a, &lb, &beta, c, &lc);
  }
  calls.fetch_add(1, std::memory_order_relaxed);
  return true;
}

template bool runtime_gemm<float>(Index, Index, Index, const float*, Index, const float*, Index, float*, Index, bool);
template bool runtime_gemm<double>(Index, Index, Index, const double*, Index, const double*, Index, double*, Index,
                                   bool);

}  // namespace mpo
