package lru

import "testing"

func TestEvictsLeastRecentlyUsed(t *testing.T) {
	c := New[string, int](2)
	c.Add("a", 1)
	c.Add("b", 2)
	if _, ok := c.Get("a"); !ok { // a is now more recent than b
		t.Fatal("a missing")
	}
	c.Add("c", 3)
	if _, ok := c.Get("b"); ok {
		t.Error("b should have been evicted as least recently used")
	}
	for k, want := range map[string]int{"a": 1, "c": 3} {
		if got, ok := c.Get(k); !ok || got != want {
			t.Errorf("Get(%q) = %d, %v; want %d, true", k, got, ok, want)
		}
	}
	if c.Len() != 2 {
		t.Errorf("Len = %d, want 2", c.Len())
	}
}

func TestCostBound(t *testing.T) {
	c := New[int, []byte](10)
	c.AddCost(1, make([]byte, 6), 6)
	c.AddCost(2, make([]byte, 6), 6) // 12 > 10: 1 goes
	if _, ok := c.Get(1); ok {
		t.Error("entry 1 kept past the byte bound")
	}
	c.AddCost(3, make([]byte, 11), 11) // larger than the cache: not stored, nothing evicted
	if _, ok := c.Get(3); ok {
		t.Error("entry larger than the capacity was stored")
	}
	if _, ok := c.Get(2); !ok {
		t.Error("an oversized Add evicted entry 2")
	}
	c.AddCost(2, nil, 1) // replacing an entry releases its old cost
	c.AddCost(4, nil, 9)
	if c.Len() != 2 {
		t.Errorf("Len = %d after replacing, want 2", c.Len())
	}
}
