package cli

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// sealedSecretName is the message whose sealed bytes the CLI never prints.
var sealedSecretName = (&kilnv1.SealedSecret{}).ProtoReflect().Descriptor().FullName()

// redactSealed returns a copy of b without the sealed bytes of its secrets
// and registry credentials — every SealedSecret anywhere in the record, so
// a sealed field added later is covered too — keeping each one's id and
// key id. The bytes are ciphertext only the farm's agents can open, but
// they have no use to a person reading the record, and a record printed
// into a CI log should not carry them at all.
func redactSealed(b *kilnv1.Build) *kilnv1.Build {
	c := proto.Clone(b).(*kilnv1.Build)
	clearSealed(c.ProtoReflect())
	return c
}

// clearSealed clears the sealed field of every SealedSecret in m.
func clearSealed(m protoreflect.Message) {
	if m.Descriptor().FullName() == sealedSecretName {
		m.Clear(m.Descriptor().Fields().ByName("sealed"))
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				clearSealed(l.Get(i).Message())
			}
		case fd.IsMap():
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				return true
			}
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				clearSealed(mv.Message())
				return true
			})
		default:
			clearSealed(v.Message())
		}
		return true
	})
}
