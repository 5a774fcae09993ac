package routing
import ("testing")
func BenchmarkRawPass(b *testing.B) {
	_, queue := benchFarm(10, 100_000)
	m := map[string]int{}
	for i := range queue { m[queue[i].Tenant] = i }
	b.Run("tenant-map", func(b *testing.B) {
		for b.Loop() { s := 0; for i := range queue { s += m[queue[i].Tenant] }; _ = s }
	})
	b.Run("touch", func(b *testing.B) {
		for b.Loop() { s := 0; for i := range queue { s += int(queue[i].Priority) + len(queue[i].Tenant) }; _ = s }
	})
	x := NewIndex(nil)
	b.Run("classFor", func(b *testing.B) {
		for b.Loop() { for i := range queue { x.classFor(queue[i].Labels) } }
	})
	b.Run("keys", func(b *testing.B) {
		k := make([]buildKey, len(queue))
		for b.Loop() { for i := range queue { k[i] = keyOf(&queue[i]) } }
	})
}
