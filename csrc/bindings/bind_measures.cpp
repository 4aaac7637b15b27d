#include "pybind.hpp"

#include "mpo/measures.hpp"

namespace mpo::bindings {

void register_measures(py::module_& m) {
  m.def(
      "entropy",
      [](const py::array_t<double, py::array::c_style | py::array::forcecast>& spectrum) {
        if (spectrum.ndim() != 1)
          throw py::value_error("entropy: a spectrum is 1-D, got " + std::to_string(spectrum.ndim()) +
                                " dimensions");
        return entropy(Eigen::Map<const Spectrum>(spectrum.data(), spectrum.shape(0)));
      },
      py::arg("spectrum"), "Entanglement entropy -sum v ln v, v = lambda^2 / sum lambda^2 (MPOP Eq. 6).");
  m.def("error_bound", &error_bound, py::arg("truncation_errors"),
        "sqrt(sum eps_k^2), the error bound of MPOP Eq. 4.");
}

}  // namespace mpo::bindings
