# Fails unless README.md contains examples/api_example.cpp verbatim, so the API
# example the README shows is the one the build compiles and the tests run.
# Usage: cmake -DREADME=... -DEXAMPLE=... -P check_readme_example.cmake
file(READ "${README}" readme)
file(READ "${EXAMPLE}" example)
string(FIND "${readme}" "${example}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md does not show ${EXAMPLE} verbatim: update the README's API example")
endif()
message(STATUS "README.md shows ${EXAMPLE} verbatim")
