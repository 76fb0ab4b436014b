"""The torch side: dataset, iterator, tensors, batch prefetching, memory guard, statistics, resume states."""
