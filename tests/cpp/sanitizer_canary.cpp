// A deliberately broken program that tests/sanitize.sh compiles with the sanitizer build's own flags and
// runs with its own options: each mode must be reported and must end the process with a non-zero
// status. If a canary survives, the harness is not live (flags dropped, a report that does not halt),
// and a clean run of the real tests would prove nothing.
//
//   sanitizer_canary heap    reads one element past a heap array       (AddressSanitizer)
//   sanitizer_canary signed  overflows a signed int                   (UndefinedBehaviorSanitizer)
#include <climits>
#include <cstdio>
#include <cstring>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  // Sizes and values come from argc, so the compiler cannot prove anything at compile time.
  if (std::strcmp(argv[1], "heap") == 0) {
    std::vector<int> v(static_cast<std::size_t>(argc) * 4, 1);
    volatile std::size_t past = v.size();
    std::printf("%d\n", v.data()[past]);
    return 0;
  }
  if (std::strcmp(argv[1], "signed") == 0) {
    volatile int big = INT_MAX - 2 + argc;  // INT_MAX when argc == 2
    int sum = big + argc;
    std::printf("%d\n", sum);
    return 0;
  }
  return 2;
}
