package kiln

// stepLog keeps, from a build's events, what a BuildFailedError reports:
// each step's instruction and last lines of output, which steps finished,
// and which step was last heard from. Not safe for concurrent use.
type stepLog struct {
	steps map[uint32]*stepOutput
	// last is the step of the latest step event or log line (0: none).
	last uint32
	// build holds the latest lines of the whole build.
	build lines
}

type stepOutput struct {
	instruction string
	finished    bool
	lines       lines
}

// lines is the last FailedOutputLines lines added.
type lines []string

func (l *lines) add(s string) {
	if len(*l) == FailedOutputLines {
		copy(*l, (*l)[1:])
		(*l)[len(*l)-1] = s
		return
	}
	*l = append(*l, s)
}

func (s *stepLog) step(n uint32) *stepOutput {
	if s.steps == nil {
		s.steps = map[uint32]*stepOutput{}
	}
	o := s.steps[n]
	if o == nil {
		o = &stepOutput{}
		s.steps[n] = o
	}
	return o
}

// add takes one event.
func (s *stepLog) add(ev Event) {
	switch e := ev.(type) {
	case *StepStarted:
		o := s.step(e.Step)
		o.instruction = e.Instruction
		s.last = e.Step
	case *StepFinished:
		o := s.step(e.Step)
		o.finished = true
		if o.instruction == "" {
			o.instruction = e.Instruction
		}
	case *LogLine:
		s.build.add(e.Text)
		if e.Step != 0 {
			s.step(e.Step).lines.add(e.Text)
			s.last = e.Step
		}
	}
}

// failed names the step a failed build failed at: the unfinished step
// last heard from (BuildKit runs the steps of independent stages at the
// same time), with its instruction and last lines. Without one it returns
// step 0 and the build's last lines.
func (s *stepLog) failed() (step uint32, instruction string, output []string) {
	if o := s.steps[s.last]; s.last != 0 && !o.finished {
		return s.last, o.instruction, append([]string(nil), o.lines...)
	}
	for n, o := range s.steps {
		if !o.finished && n > step {
			step = n
		}
	}
	if step != 0 {
		o := s.steps[step]
		return step, o.instruction, append([]string(nil), o.lines...)
	}
	return 0, "", append([]string(nil), s.build...)
}
