// libFuzzer target for the 'binary' codec: see codec_fuzz.h for what each
// input is checked for. Run with scripts/fuzz; seeds in corpus/binary_fuzz/.
#include <cstddef>
#include <cstdint>

#include "codec_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return dogpile::fuzz::fuzz_codec(dogpile::CodecId::kBinary, data, size);
}
