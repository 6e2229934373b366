#include "dogpile/invalidation.h"

#include <atomic>
#include <cstdint>

#include "backends/stamp_file.h"

namespace dogpile {
namespace {

class LocalInvalidation final : public InvalidationStrategy {
 public:
  Status invalidate(bool hard, WallTime at) override {
    internal::raise_stamp(hard ? hard_ : soft_, internal::stamp_for(at));
    return Status::ok();
  }
  bool is_hard_invalidated(WallTime created_at) const override {
    return internal::older_than(internal::wall_ns(created_at),
                                hard_.load(std::memory_order_acquire));
  }
  bool is_soft_invalidated(WallTime created_at) const override {
    return internal::older_than(internal::wall_ns(created_at),
                                soft_.load(std::memory_order_acquire));
  }
  bool was_hard_invalidated() const override { return hard_.load(std::memory_order_acquire) != 0; }
  bool was_soft_invalidated() const override { return soft_.load(std::memory_order_acquire) != 0; }

 private:
  std::atomic<std::int64_t> hard_{0};  // ns since the epoch; 0: never
  std::atomic<std::int64_t> soft_{0};
};

}  // namespace

std::shared_ptr<InvalidationStrategy> make_local_invalidation() {
  return std::make_shared<LocalInvalidation>();
}

}  // namespace dogpile
