// mpo._core: typed primitives over the C++ core. Everything a person touches is Python on top.
#include "pybind.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "Typed primitives of the mpo C++ core (private; use the mpo package).";
  mpo::bindings::register_decompose(m);
  mpo::bindings::register_contract(m);
  mpo::bindings::register_measures(m);
  mpo::bindings::register_apply(m);
}
