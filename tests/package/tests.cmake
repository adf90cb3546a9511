# Tests of the packages and of the API reference; included from tests/CMakeLists.txt (tests/package/CMakeLists.txt is
# the downstream project that package_find_package builds).

# vcpkg: both manifests validate against vcpkg's published JSON schema (vcpkg-schema/), broken ones do not.
sdlora_add_test(NAME package_vcpkg_manifests LABELS unit SOURCES package/vcpkg_manifest_test.cpp BUNDLE small_units
                DEFINITIONS SDLORA_SOURCE_DIR="${PROJECT_SOURCE_DIR}" SDLORA_PROJECT_VERSION="${PROJECT_VERSION}")

# vcpkg: the port's CMake flow with stand-ins for the vcpkg_* functions.
add_test(NAME package_vcpkg_portfile
  COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -DBINARY_DIR=${CMAKE_CURRENT_BINARY_DIR}/package_vcpkg
          -P ${CMAKE_CURRENT_SOURCE_DIR}/package/vcpkg_portfile_dry_run.cmake)
set_tests_properties(package_vcpkg_portfile PROPERTIES LABELS "e2e")

# Conan: `conan create` with the offline Debian profile; skipped when conan is not on PATH (CI has no Python).
add_test(NAME package_conan_create
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/package/conan_create.sh ${PROJECT_SOURCE_DIR}
          ${CMAKE_CURRENT_BINARY_DIR}/package_conan)
set_tests_properties(package_conan_create PROPERTIES LABELS "e2e" SKIP_RETURN_CODE 77 TIMEOUT 1200)

# The API reference: Doxygen without a warning (the `docs` target, cmake/sdloraDocs.cmake).
if(TARGET docs)
  add_test(NAME docs_api_reference
    COMMAND ${CMAKE_COMMAND} -DDOXYGEN=${DOXYGEN_EXECUTABLE} -DDOXYFILE=${SDLORA_DOXYFILE}
            -DOUTPUT_DIR=${SDLORA_DOCS_OUTPUT_DIR} -DBAD_HEADER=${CMAKE_CURRENT_SOURCE_DIR}/package/doxygen_warns.hpp
            -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/docs_warns -P ${CMAKE_CURRENT_SOURCE_DIR}/package/check_docs.cmake)
else()
  add_test(NAME docs_api_reference COMMAND ${CMAKE_COMMAND} -E echo "SKIPPED: Doxygen (or awk) was not found")
  set_tests_properties(docs_api_reference PROPERTIES SKIP_REGULAR_EXPRESSION "SKIPPED:")
endif()
set_tests_properties(docs_api_reference PROPERTIES LABELS "unit")

# Clang: tests/package/clang_check.cpp (the instances and every umbrella header) through clang++ -fsyntax-only with
# the warnings as errors; registered where a clang++ is installed (scripts/deps installs Debian's, optionally).
find_program(SDLORA_CLANG_CHECK_CXX NAMES clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14)
if(SDLORA_CLANG_CHECK_CXX)
  add_test(NAME headers_clang
    COMMAND ${SDLORA_CLANG_CHECK_CXX} -std=c++20 -fsyntax-only -Wall -Wextra -Werror
            "-D$<JOIN:$<TARGET_PROPERTY:sdlora,INTERFACE_COMPILE_DEFINITIONS>,;-D>"
            -I${PROJECT_SOURCE_DIR}/include -isystem ${SDLORA_STB_INCLUDE_DIR}
            "-isystem$<JOIN:$<TARGET_PROPERTY:Eigen3::Eigen,INTERFACE_INCLUDE_DIRECTORIES>,;-isystem>"
            ${CMAKE_CURRENT_SOURCE_DIR}/package/clang_check.cpp
    COMMAND_EXPAND_LISTS)
  set_tests_properties(headers_clang PROPERTIES LABELS "unit" COST 15)  # seconds, measured
else()
  add_test(NAME headers_clang COMMAND ${CMAKE_COMMAND} -E echo "SKIPPED: no clang++ found")
  set_tests_properties(headers_clang PROPERTIES LABELS "unit" SKIP_REGULAR_EXPRESSION "SKIPPED:")
endif()
