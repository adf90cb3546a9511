/// @file pch.cpp
/// @brief Carries the tests' shared precompiled header (SDLORA_TEST_PCH in tests/CMakeLists.txt); nothing else.
