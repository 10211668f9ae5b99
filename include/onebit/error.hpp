// onebit::Error and the check macro every layer uses to report a broken precondition.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace onebit {

// Thrown by library code. The message names the operation, the rank where known, and the cause.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] inline void fail(const char* file, int line, const std::string& what) {
  std::ostringstream s;
  s << what << " (" << file << ":" << line << ")";
  throw Error(s.str());
}
}  // namespace detail

}  // namespace onebit

// ONEBIT_CHECK(cond, "message " << value): throws onebit::Error naming file:line when cond is false.
#define ONEBIT_CHECK(cond, msg)                              \
  do {                                                       \
    if (!(cond)) {                                           \
      std::ostringstream onebit_check_s_;                    \
      onebit_check_s_ << msg;                                \
      ::onebit::detail::fail(__FILE__, __LINE__, onebit_check_s_.str()); \
    }                                                        \
  } while (0)
