# Registers the CTest test package.find_package: install this build tree into a temp
# prefix, then configure, build and run tests/package/consumer against it.
# Included from tests/CMakeLists.txt; the work itself is in run_package_test.cmake.

get_property(_bb_multi_config GLOBAL PROPERTY GENERATOR_IS_MULTI_CONFIG)
set(_bb_pkg_args
  -DBARBELL_BINARY_DIR=${PROJECT_BINARY_DIR}
  -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/package-test
  -DCONSUMER_SOURCE_DIR=${CMAKE_CURRENT_LIST_DIR}/consumer
  -DGENERATOR=${CMAKE_GENERATOR}
  -DCXX_COMPILER=${CMAKE_CXX_COMPILER}
  -DINSTALL_LIBDIR=${CMAKE_INSTALL_LIBDIR}
  -DINSTALL_INCLUDEDIR=${CMAKE_INSTALL_INCLUDEDIR}
  -DSANITIZE=${BARBELL_SANITIZE}
  -DHAVE_CUDA=${BARBELL_HAVE_CUDA}
  -DHAVE_MPI=${BARBELL_HAVE_MPI})
if(_bb_multi_config)
  list(APPEND _bb_pkg_args -DCONFIG=$<CONFIG>)
else()
  list(APPEND _bb_pkg_args -DCONFIG=${CMAKE_BUILD_TYPE})
endif()
add_test(NAME package.find_package
  COMMAND ${CMAKE_COMMAND} ${_bb_pkg_args} -P ${CMAKE_CURRENT_LIST_DIR}/run_package_test.cmake)
# It configures and compiles a project of its own, hence the generous timeout.
set_tests_properties(package.find_package PROPERTIES LABELS package TIMEOUT 600)
unset(_bb_pkg_args)
unset(_bb_multi_config)
