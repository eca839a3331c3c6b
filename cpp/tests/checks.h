// The C++ tests' bookkeeping: count checks, print each failure, report at the end.
#pragma once

#include <iostream>
#include <string>

namespace equiformer_test {

inline int failures = 0, checks = 0;

inline void check(bool ok, const std::string &what)
{
  ++checks;
  if (!ok) {
    ++failures;
    std::cerr << "FAIL: " << what << "\n";
  }
}

// Prints the tally; the exit status of main (0: every check passed).
inline int report()
{
  std::cout << checks - failures << "/" << checks << " checks passed\n";
  return failures == 0 ? 0 : 1;
}

}  // namespace equiformer_test
