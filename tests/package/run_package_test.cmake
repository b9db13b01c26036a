# Script (cmake -P) behind the CTest test package.find_package: installs a barbell build
# tree into a fresh prefix, checks the installed files, then builds and runs the consumer.
cmake_minimum_required(VERSION 3.25)

foreach(var BARBELL_BINARY_DIR WORK_DIR CONSUMER_SOURCE_DIR GENERATOR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_package_test.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT INSTALL_LIBDIR)
  set(INSTALL_LIBDIR lib)
endif()
if(NOT INSTALL_INCLUDEDIR)
  set(INSTALL_INCLUDEDIR include)
endif()

set(prefix ${WORK_DIR}/prefix)
set(consumer_build ${WORK_DIR}/consumer-build)
file(REMOVE_RECURSE ${prefix} ${consumer_build})
file(MAKE_DIRECTORY ${prefix} ${consumer_build})

function(step name)
  string(TIMESTAMP t0 "%s")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  string(TIMESTAMP t1 "%s")
  math(EXPR dt "${t1} - ${t0}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "package test: ${name} failed (${rc}) after ${dt}s: ${ARGN}")
  endif()
  message(STATUS "package test: ${name} ok (${dt}s)")
endfunction()

# 1. Install the build tree.
set(config_args)
if(CONFIG)
  set(config_args --config ${CONFIG})
endif()
step("install" ${CMAKE_COMMAND} --install ${BARBELL_BINARY_DIR} --prefix ${prefix} ${config_args})

# 2. The installed files a consumer relies on.
set(expected
  ${INSTALL_INCLUDEDIR}/barbell/barbell.hpp
  ${INSTALL_INCLUDEDIR}/barbell/config.hpp
  ${INSTALL_INCLUDEDIR}/barbell/core/tensor.hpp
  ${INSTALL_INCLUDEDIR}/barbell/ops/ops.hpp
  ${INSTALL_LIBDIR}/libbarbell.so
  ${INSTALL_LIBDIR}/cmake/barbell/barbellConfig.cmake
  ${INSTALL_LIBDIR}/cmake/barbell/barbellConfigVersion.cmake
  ${INSTALL_LIBDIR}/cmake/barbell/barbellTargets.cmake)
foreach(f ${expected})
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "package test: ${f} is missing from the installed prefix ${prefix}")
  endif()
endforeach()
file(GLOB targets_files ${prefix}/${INSTALL_LIBDIR}/cmake/barbell/barbellTargets*.cmake)
foreach(f ${targets_files})
  file(READ ${f} text)
  # The CUDA runtime is a private, static part of the library: an exported CUDA:: target
  # would make every consumer find the CUDA toolkit.
  if(text MATCHES "CUDA::")
    message(FATAL_ERROR "package test: ${f} exports a CUDA:: target; consumers would need the CUDA toolkit")
  endif()
  # Absolute paths into the source or build tree make the package unrelocatable.
  if(text MATCHES "${BARBELL_BINARY_DIR}/")
    message(FATAL_ERROR "package test: ${f} refers to the build tree ${BARBELL_BINARY_DIR}")
  endif()
endforeach()
file(READ ${prefix}/${INSTALL_INCLUDEDIR}/barbell/config.hpp config_hpp)
if(HAVE_CUDA AND NOT config_hpp MATCHES "#define BARBELL_HAVE_CUDA 1")
  message(FATAL_ERROR "package test: installed config.hpp does not say BARBELL_HAVE_CUDA 1:\n${config_hpp}")
endif()
# The MPI process group is a module beside the library, which libbarbell opens at run time.
if(HAVE_MPI AND NOT EXISTS ${prefix}/${INSTALL_LIBDIR}/libbarbell_mpi.so)
  message(FATAL_ERROR "package test: ${INSTALL_LIBDIR}/libbarbell_mpi.so (the MPI backend) is missing from ${prefix}")
endif()
message(STATUS "package test: installed files present (${prefix})")
# An installed program must find the installed library through its own RPATH.
if(EXISTS ${prefix}/bin/barbell-train)
  step("run installed barbell-train --help" ${prefix}/bin/barbell-train --help)
endif()

# 3. Configure, build and run the consumer against the prefix only.
set(consumer_args
  -S ${CONSUMER_SOURCE_DIR} -B ${consumer_build} -G ${GENERATOR}
  -DCMAKE_PREFIX_PATH=${prefix}
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(CXX_COMPILER)
  list(APPEND consumer_args -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()
if(CONFIG)
  list(APPEND consumer_args -DCMAKE_BUILD_TYPE=${CONFIG})
endif()
if(SANITIZE)
  # A sanitized libbarbell.so needs the sanitizer runtime loaded first, by the program.
  list(APPEND consumer_args "-DCMAKE_CXX_FLAGS=-fsanitize=${SANITIZE}"
    "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=${SANITIZE}")
endif()
step("configure consumer" ${CMAKE_COMMAND} ${consumer_args})

file(STRINGS ${consumer_build}/CMakeCache.txt found_dir REGEX "^barbell_DIR:")
string(REGEX REPLACE "^[^=]*=" "" found_dir "${found_dir}")
file(REAL_PATH "${found_dir}" found_dir)
file(REAL_PATH "${prefix}" real_prefix)
string(FIND "${found_dir}" "${real_prefix}/" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "package test: the consumer found barbell in ${found_dir}, not under ${prefix}")
endif()

step("build consumer" ${CMAKE_COMMAND} --build ${consumer_build} ${config_args})

find_program(consumer_exe consumer PATHS ${consumer_build} ${consumer_build}/${CONFIG} NO_DEFAULT_PATH REQUIRED)
step("run consumer" ${consumer_exe})
message(STATUS "package test: passed")
