// Package lru is a small, concurrency-safe least-recently-used map with a
// bound on its total cost (entries, or bytes when the caller says so).
package lru

import (
	"container/list"
	"sync"
)

// Cache maps K to V and evicts the least recently used entries once the
// summed cost of its entries exceeds its capacity.
type Cache[K comparable, V any] struct {
	mu    sync.Mutex
	cap   int64
	used  int64
	order *list.List // front = most recently used
	items map[K]*list.Element
}

type entry[K comparable, V any] struct {
	key  K
	val  V
	cost int64
}

// New returns a cache holding at most capacity worth of entries.
func New[K comparable, V any](capacity int64) *Cache[K, V] {
	return &Cache[K, V]{cap: capacity, order: list.New(), items: map[K]*list.Element{}}
}

// Get returns the value for k and marks it recently used.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.order.MoveToFront(el)
		return el.Value.(*entry[K, V]).val, true
	}
	var zero V
	return zero, false
}

// Add stores v under k at cost 1.
func (c *Cache[K, V]) Add(k K, v V) { c.AddCost(k, v, 1) }

// AddCost stores v under k, counting cost against the capacity. An entry
// costing more than the whole capacity is not stored.
func (c *Cache[K, V]) AddCost(k K, v V, cost int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.used -= el.Value.(*entry[K, V]).cost
		c.order.Remove(el)
		delete(c.items, k)
	}
	if cost > c.cap {
		return
	}
	c.items[k] = c.order.PushFront(&entry[K, V]{key: k, val: v, cost: cost})
	c.used += cost
	for c.used > c.cap {
		last := c.order.Back()
		e := last.Value.(*entry[K, V])
		c.order.Remove(last)
		delete(c.items, e.key)
		c.used -= e.cost
	}
}

// Len is the number of entries held.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items)
}

// Remove drops k if it is held.
func (c *Cache[K, V]) Remove(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.used -= el.Value.(*entry[K, V]).cost
		c.order.Remove(el)
		delete(c.items, k)
	}
}

// Purge drops every entry.
func (c *Cache[K, V]) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.order.Init()
	clear(c.items)
	c.used = 0
}
