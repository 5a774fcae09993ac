package cli

import (
	"fmt"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/annotations"
	"github.com/kilnbuild/kiln/proto/rules/attest"
	"github.com/spf13/pflag"
)

// attestFlags holds --annotation, --provenance, --sbom, --attest, --call
// and --check, which proto/rules/annotations and proto/rules/attest parse
// and check: a standalone BuildKit agent honours them, and a farm without
// one refuses them when the build starts (FailedPrecondition, exit 2).
type attestFlags struct {
	annotations      []string
	provenance, sbom string
	attests          []string
	call             string
	check            bool
}

// register adds the flags. --provenance and --sbom alone mean =true, as
// in buildx (a value then needs "=": --provenance=mode=max).
func (f *attestFlags) register(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.annotations, "annotation", nil, `Add an annotation to the image (format: "[type[,type...][platform]:]key=value", type manifest (default), index, manifest-descriptor or index-descriptor); needs a BuildKit agent; repeatable`)
	fs.StringVar(&f.provenance, "provenance", "", `Attach a provenance attestation to the pushed image ("true", "mode=min|max", "false"); needs a BuildKit agent and --push`)
	fs.Lookup("provenance").NoOptDefVal = "true"
	fs.StringVar(&f.sbom, "sbom", "", `Attach an SBOM attestation to the pushed image ("true", "generator=IMAGE", "false"); needs a BuildKit agent whose engine can pull the scanner image, and --push`)
	fs.Lookup("sbom").NoOptDefVal = "true"
	fs.StringArrayVar(&f.attests, "attest", nil, `Attestation parameters (format: "type=provenance|sbom[,key=value...]", as --provenance and --sbom take them); repeatable`)
	fs.StringVar(&f.call, "call", "", `Ask the Dockerfile frontend instead of building: "check" (lint rules: prints the warnings, exits 1 when there are some), "outline", "targets"; "build" builds (default); needs a BuildKit agent`)
	fs.BoolVar(&f.check, "check", false, `Shorthand for --call=check`)
}

// apply parses the flags into spec and checks them with the rest of it
// (attest.CheckSpec: attestations need --push, a call builds nothing, ...).
func (f *attestFlags) apply(spec *kilnv1.BuildSpec) error {
	if _, err := annotations.Parse(f.annotations); err != nil {
		return &usageError{msg: "--annotation: " + err.Error()}
	}
	spec.Annotations = f.annotations
	spec.Provenance, spec.Sbom = f.provenance, f.sbom
	for _, v := range f.attests {
		typ, value, err := attest.ParseAttest(v)
		if err != nil {
			return &usageError{msg: err.Error()}
		}
		dst := &spec.Provenance
		if typ == attest.SBOM {
			dst = &spec.Sbom
		}
		if *dst != "" {
			return &usageError{msg: fmt.Sprintf("--attest %s: %s attestations are already set (by --%s or another --attest)", v, typ, typ)}
		}
		*dst = value
	}
	call, err := attest.ParseCall(f.call)
	if err != nil {
		return &usageError{msg: err.Error()}
	}
	if f.check {
		if call != "" && call != attest.CallCheck {
			return &usageError{msg: fmt.Sprintf("--check is --call=check, and --call=%s was given too", call)}
		}
		call = attest.CallCheck
	}
	spec.Call = call
	if err := attest.CheckSpec(spec); err != nil {
		return &usageError{msg: err.Error()}
	}
	return nil
}
