// Overflow-checked size arithmetic. Every size the kernels compute from shapes they were handed goes
// through here: a product that wraps around is undefined behaviour, and a wrapped size allocates a
// small buffer that the kernel then writes far past (a crafted file did exactly that).
#pragma once

#include "mpo/types.hpp"

#include <initializer_list>
#include <stdexcept>
#include <string>

namespace mpo {

// a·b for sizes a, b >= 0, or std::length_error naming `what` and both factors when it does not fit in
// an Index (Python sees ValueError).
inline Index checked_mul(Index a, Index b, const char* what) {
  Index out;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &out))
    throw std::length_error(std::string("mpo: ") + what + " is too large: " + std::to_string(a) + " x " +
                            std::to_string(b) + " does not fit in a 64-bit size");
  return out;
}

// The product of sizes, checked at every step.
inline Index checked_product(std::initializer_list<Index> sizes, const char* what) {
  Index out = 1;
  for (Index s : sizes) out = checked_mul(out, s, what);
  return out;
}

// a + b for sizes, checked like checked_mul.
inline Index checked_add(Index a, Index b, const char* what) {
  Index out;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &out))
    throw std::length_error(std::string("mpo: ") + what + " is too large: " + std::to_string(a) + " + " +
                            std::to_string(b) + " does not fit in a 64-bit size");
  return out;
}

}  // namespace mpo
