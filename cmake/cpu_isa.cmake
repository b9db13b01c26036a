# The vectorised CPU kernels (src/cpu/isa/vec_*.cpp, one file per x86-64 level) get
# their level's instruction-set flags; the rest of the library stays baseline x86-64,
# and src/cpu/vec.cpp picks a level at run time. Elsewhere they build without flags
# (and only the baseline one is ever picked).
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
  set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/src/cpu/isa/vec_avx2.cpp PROPERTIES
    COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
  set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/src/cpu/isa/vec_avx512.cpp PROPERTIES
    COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mavx512f;-mavx512bw;-mavx512dq;-mavx512vl;-mprefer-vector-width=512")
endif()
target_link_libraries(barbell PRIVATE ${CMAKE_DL_LIBS})  # src/cpu/gemm.cpp opens libdnnl at run time
