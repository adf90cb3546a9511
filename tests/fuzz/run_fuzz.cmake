# Builds tests/fuzz/standalone with clang++ (libFuzzer + ASan + UBSan) and fuzzes the safetensors reader for
# SECONDS seconds. Arguments: CLANGXX SOURCE_DIR BINARY_DIR SEEDS DICT SECONDS.
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BINARY_DIR} -DCMAKE_CXX_COMPILER=${CLANGXX}
                        -DCMAKE_BUILD_TYPE=RelWithDebInfo COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR} COMMAND_ERROR_IS_FATAL ANY)
file(MAKE_DIRECTORY ${BINARY_DIR}/corpus)
execute_process(COMMAND ${BINARY_DIR}/safetensors_fuzz ${BINARY_DIR}/corpus ${SEEDS} -dict=${DICT}
                        -max_total_time=${SECONDS} -max_len=4096 -rss_limit_mb=2048
                WORKING_DIRECTORY ${BINARY_DIR} COMMAND_ERROR_IS_FATAL ANY)
