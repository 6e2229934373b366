// libFuzzer target for the 'portable_binary' codec: see codec_fuzz.h for what each
// input is checked for. Run with scripts/fuzz; seeds in corpus/portable_binary_fuzz/.
#include <cstddef>
#include <cstdint>

#include "codec_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return dogpile::fuzz::fuzz_codec(dogpile::CodecId::kPortableBinary, data, size);
}
