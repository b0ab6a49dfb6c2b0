package agent

func defaultEncoder() Encoder { return JSONEncoder{} }
