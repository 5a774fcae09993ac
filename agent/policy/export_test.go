package policy

import "github.com/moby/buildkit/frontend/dockerfile/parser"

var detectSyntax = parser.DetectSyntax
