// onebit::Error and the check macro every layer uses to report a broken precondition.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace onebit {

// Thrown by library code. The message names the operation, the rank where known, and the cause; it
// is what users read (the CLI prints it, Python raises it), so it carries no source location: a failed
// ONEBIT_CHECK keeps its file and line apart, in file() and line(), for whoever debugs onebit.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  Error(const std::string& what, const char* file, int line) : std::runtime_error(what), file_(file), line_(line) {}
  const char* file() const { return file_; }  // nullptr when not thrown by ONEBIT_CHECK
  int line() const { return line_; }

 private:
  const char* file_ = nullptr;
  int line_ = 0;
};

namespace detail {
[[noreturn]] inline void fail(const char* file, int line, const std::string& what) { throw Error(what, file, line); }
}  // namespace detail

}  // namespace onebit

// ONEBIT_CHECK(cond, "message " << value): throws onebit::Error(message) when cond is false, with the
// check's file and line in Error::file() and line().
#define ONEBIT_CHECK(cond, msg)                              \
  do {                                                       \
    if (!(cond)) {                                           \
      std::ostringstream onebit_check_s_;                    \
      onebit_check_s_ << msg;                                \
      ::onebit::detail::fail(__FILE__, __LINE__, onebit_check_s_.str()); \
    }                                                        \
  } while (0)

// ONEBIT_FAIL("message " << value): throws as a failed ONEBIT_CHECK does.
#define ONEBIT_FAIL(msg) ONEBIT_CHECK(false, msg)
