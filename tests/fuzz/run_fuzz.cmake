# Builds tests/fuzz/standalone with clang++ (libFuzzer + ASan + UBSan) for one target and fuzzes it for SECONDS
# seconds. Arguments: CLANGXX SOURCE_DIR BINARY_DIR TARGET SEEDS DICT (may be empty) SECONDS.
if(NOT TARGET)
  set(TARGET safetensors)
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BINARY_DIR} -DCMAKE_CXX_COMPILER=${CLANGXX}
                        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFUZZ_TARGET=${TARGET} COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR} COMMAND_ERROR_IS_FATAL ANY)
file(MAKE_DIRECTORY ${BINARY_DIR}/corpus)
set(dict_arg)
if(DICT)
  set(dict_arg -dict=${DICT})
endif()
execute_process(COMMAND ${BINARY_DIR}/${TARGET}_fuzz ${BINARY_DIR}/corpus ${SEEDS} ${dict_arg}
                        -max_total_time=${SECONDS} -max_len=4096 -rss_limit_mb=2048
                WORKING_DIRECTORY ${BINARY_DIR} COMMAND_ERROR_IS_FATAL ANY)
