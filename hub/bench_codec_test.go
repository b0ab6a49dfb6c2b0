package hub

import "encoding/json"

func benchCodec() (func(*Batch) []byte, Decoder) {
	return func(b *Batch) []byte { j, _ := json.Marshal(jsonMsg{Batch: b}); return j }, jsonDecoder{}
}

func benchSchema() Schema { return testSchema{} }
