package health

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// slackMessage is a webhook's JSON body in Slack's incoming-webhook
// format: text, and one attachment with fields (Mattermost, Rocket.Chat,
// Discord's /slack endpoint and most chat tools take the same).
type slackMessage struct {
	Text        string            `json:"text"`
	Attachments []slackAttachment `json:"attachments,omitempty"`
}

type slackAttachment struct {
	Fallback string       `json:"fallback"`
	Color    string       `json:"color"`
	Title    string       `json:"title"`
	Fields   []slackField `json:"fields"`
	Footer   string       `json:"footer"`
	TS       int64        `json:"ts"`
}

type slackField struct {
	Title string `json:"title"`
	Value string `json:"value"`
	Short bool   `json:"short"`
}

// message describes c: changes is how many changes of state the message
// stands for (more than 1 when the rate limit held some back or the queue
// dropped some), dropped how many the queue dropped.
func (w *Webhook) message(c StateChange, changes, dropped int) slackMessage {
	where := ""
	if w.opts.Host != "" {
		where = " on " + w.opts.Host
	}
	if w.opts.Slot != "" {
		where += " (slot " + w.opts.Slot + ")"
	}
	names := notPassing(c.Health)
	text := fmt.Sprintf("cdc%s is %s (was %s)", where, c.To, c.From)
	if len(names) == 0 {
		text += ": all checks pass"
	} else {
		parts := make([]string, len(names))
		for i, n := range names {
			parts[i] = n + map[Level]string{Fail: " fails", Warn: " warns"}[c.Health.Checks[n].Status]
		}
		text += ": " + strings.Join(parts, ", ")
	}
	if changes > 1 {
		text += fmt.Sprintf(" (the state changed %d times since the last message; at most one message per state every %s)", changes, w.opts.Every)
	}
	fields := []slackField{{Title: "status", Value: fmt.Sprintf("%s (was %s)", c.To, c.From), Short: true}}
	for _, f := range [][2]string{{"host", w.opts.Host}, {"slot", w.opts.Slot}, {"mode", w.opts.Mode}} {
		if f[1] != "" {
			fields = append(fields, slackField{Title: f[0], Value: f[1], Short: true})
		}
	}
	if changes > 1 {
		fields = append(fields, slackField{Title: "changes", Value: fmt.Sprint(changes), Short: true})
	}
	if dropped > 0 {
		fields = append(fields, slackField{Title: "dropped", Value: fmt.Sprintf("%d changes dropped while the webhook was slow", dropped), Short: true})
	}
	for _, n := range names {
		chk := c.Health.Checks[n]
		var lines []string
		if h := headline(n, chk.Message); h != "" {
			lines = append(lines, h)
		}
		if chk.Recommendation != "" {
			lines = append(lines, "→ "+chk.Recommendation)
		}
		fields = append(fields, slackField{Title: n + ": " + string(chk.Status), Value: strings.Join(lines, "\n")})
	}
	color := map[Status]string{Healthy: "good", Degraded: "warning", Unhealthy: "danger"}[c.To]
	return slackMessage{Text: text, Attachments: []slackAttachment{{
		Fallback: text, Color: color, Title: "cdc " + string(c.To) + where,
		Fields: fields, Footer: "cdc health (cdc status for details)", TS: c.At.Unix(),
	}}}
}

// notPassing names the checks that fail, then those that warn, each in
// name order.
func notPassing(h Health) []string {
	var fails, warns []string
	for _, n := range slices.Sorted(maps.Keys(h.Checks)) {
		switch h.Checks[n].Status {
		case Fail:
			fails = append(fails, n)
		case Warn:
			warns = append(warns, n)
		}
	}
	return append(fails, warns...)
}

// countsOnly are the checks whose messages hold only counts, durations,
// thresholds and names cdc chose (the slot's).
var countsOnly = map[string]bool{CheckLag: true, CheckErrorRate: true, CheckFailures: true, CheckReconcile: true,
	CheckPools: true, CheckDeadLetters: true, CheckSlot: true}

// headline is what a message may carry of a check's message. The stream's,
// the databases' and the standby's messages end in text from elsewhere (an
// error, which may quote a value; the other instance): only the part
// before it is kept. Any other check's message is left out: its name,
// level and recommendation remain.
func headline(name, msg string) string {
	switch {
	case countsOnly[name]:
		return msg
	case name == CheckStream || name == CheckStandby:
		before, _, _ := strings.Cut(msg, ": ")
		return before
	case name == CheckDatabases:
		var down []string
		for _, part := range strings.Split(msg, "; ") {
			if before, _, ok := strings.Cut(part, ": "); ok && strings.HasSuffix(before, " database unreachable") {
				down = append(down, before)
			}
		}
		return strings.Join(down, "; ")
	}
	return ""
}
