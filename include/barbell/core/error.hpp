// barbell::Error and its subclasses, and the checking macro that library code uses
// to turn bad input into an exception whose message names the op and the shapes.
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace barbell {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};
class ShapeError : public Error { using Error::Error; };
class DTypeError : public Error { using Error::Error; };
class DeviceError : public Error { using Error::Error; };
class IndexError : public Error { using Error::Error; };   // e.g. token id out of range
class ValueError : public Error { using Error::Error; };   // a bad argument value
class IOError : public Error { using Error::Error; };
class CudaError : public Error { using Error::Error; };
class NcclError : public Error { using Error::Error; };

}  // namespace barbell

// BB_CHECK(cond, ErrorType, "fmt", args...): throw ErrorType with the formatted message.
#define BB_CHECK(cond, ErrType, ...)                    \
  do {                                                  \
    if (!(cond)) throw ErrType(fmt::format(__VA_ARGS__)); \
  } while (0)
