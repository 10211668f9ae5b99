// For tests: the message of the onebit::Error that f throws, or "" when it throws none.
#pragma once
#include <functional>
#include <string>

#include "onebit/error.hpp"

namespace onebit::test {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace onebit::test
