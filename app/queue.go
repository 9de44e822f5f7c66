package app

import (
	"slices"
	"sync"
)

// queue hands records from the goroutines that make them to the one that
// writes them: alerts waiting for the next checkpoint, the scoring API's
// outputs waiting for Kafka.
type queue[T any] struct {
	mu    sync.Mutex
	items []T
	wake  chan struct{} // signalled on add
}

func newQueue[T any]() *queue[T] { return &queue[T]{wake: make(chan struct{}, 1)} }

func (q *queue[T]) add(items []T) {
	if len(items) == 0 {
		return
	}
	q.mu.Lock()
	q.items = append(q.items, items...)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *queue[T]) take() []T {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items
}

// putBack returns items taken but not handled to the front of the queue.
func (q *queue[T]) putBack(items []T) {
	if len(items) == 0 {
		return
	}
	q.mu.Lock()
	q.items = append(items, q.items...)
	q.mu.Unlock()
}

// drop removes the waiting items for which gone returns true.
func (q *queue[T]) drop(gone func(T) bool) {
	q.mu.Lock()
	q.items = slices.DeleteFunc(q.items, gone)
	q.mu.Unlock()
}
