"""Turn a generator's free-form output into candidate instructions, and say why the rest is junk.

Generators do not follow format instructions reliably: a model asked for "a numbered list, no
commentary" opens with "Sure! Here are 10 requests:", numbers items `1.`, `1)`, `(1)` or with
bullets, wraps lines, bolds a label, quotes each item and signs off with "Let me know if...";
asked for JSON it adds a ```json fence, a trailing comma, prose around it, or runs out of
tokens halfway through the array. A safety-tuned generator may also refuse, and a tiny or
broken one emits byte soup. Parsing here is tolerant about *shape* (salvage every complete
item) and strict about *content* (`junk_reason`), so what reaches synthesis is a list of
plausible user requests, and every dropped piece is counted under a reason.
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .chat import content_problem
from .textnorm import IDEOGRAPHS, UNSPACED
from .judges import ARABIC_DECLINE, HINDI_DECLINE, straight_apostrophes, strip_thinking

MIN_CHARS = 12
MIN_WORDS = 3
MAX_CHARS = 2000
MAX_LITERAL_CHARS = 200_000  # bound for the ast.literal_eval fallback (single-quoted "JSON")
ROLES = frozenset({"system", "user", "assistant", "tool"})

# Drop reasons (also the keys of ParseResult.dropped and synthesis.json's drop counts).
TOO_SHORT, TOO_LONG, REFUSAL, NOT_INSTRUCTION, GARBLED, BAD_SCENARIO, TRUNCATED = (
    "too_short", "too_long", "refusal", "not_instruction", "garbled", "bad_scenario", "truncated")

# Chinese and Japanese lists number items "1、", "１．", "（1）" or "一、", with no space before the item, and
# often "1." straight before it, or "第1条：" ("item 1:"): those numbers stayed at the start of every request.
_CJK_MARKER = (r"\u7b2c\d{1,3}[\u6761\u4e2a\u9879][:\uff1a]|[\uff08(]\d{1,3}[\uff09)]|\d{1,3}[\u3001\uff0e\uff09]|[\u4e00\u4e8c\u4e09\u56db\u4e94\u516d\u4e03\u516b\u4e5d\u5341]{1,3}\u3001"
               r"|\d{1,3}[.):](?=[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af])")
# Circled and parenthesised numbers ("①", "⑴", "⒈", "❶") and keycap digits ("1️⃣", "🔟"): they stayed at the start
# of every request.
_CIRCLED = r"[\u2460-\u249b\u2776-\u2793]|\d\ufe0f?\u20e3|\U0001f51f"
# "1\." (markdown-escaped), "*1.*" and "`1.`" number items too: the numbers stayed at the start of every request.
# "1-" numbers Arabic, Persian and Turkish lists ("١- ..."): unread, the numbers stayed in every request and a
# wrapped line became a request of its own. So does "1 - " ("1 – "), but not before a number: "1 - 2 people ..." is a
# request.
_MARKER = re.compile(
    # "[1]" numbers items too, and an en or em dash or a middle dot bullets them (French, Russian, Spanish typography)
    r"^(?P<indent>[ \t]*)(?:(?:\(?\d{1,3}[.):\]]|\d{1,3}-|\d{1,3}[ \t]+[-\u2013\u2014](?=[ \t]+\D)|\d{1,3}\\[.)]|\(\d{1,3}\)|\[\d{1,3}\]|#\d{1,3}[.:)]?"
    r"|(?P<b>\*\*|__|\*|_|`)\d{1,3}[.):](?P=b)"
    r"|[-*\u2022\u2023\u25e6\u2043+\u2013\u2014\u00b7])[ \t]+|(?:" + _CJK_MARKER + "|" + _CIRCLED + r")[ \t\u3000]*)(?P<body>\S.*)$")
# "Request 3:", and in any script and French spacing: "Petición 3:", "Demande 3 :", "Запрос 3:". A marker only
# where the output numbers two lines or more with the same word (`_markers`): "Windows 10: how do I ...",
# "iPhone 15: ...", "Section 230: ..." lost their first words, and one such line made a list of a
# one-request-per-line output, every later line glued to it as one request.
_LABEL_MARKER = re.compile(r"^(?P<indent>[ \t]*)(?P<word>[^\W\d_]{1,12})\s?(?P<number>\d{1,3})[ \t]?[.):][ \t]+(?P<body>\S.*)$")
# Lettered and Roman-numbered items ("a)", "b.", "(c)", "ii."), read as markers only in a list numbered with them
# from its start (`_lettered`): one letter and a period also open "E. coli ...", "B. anthracis ..." or
# "A. Smith ...", and stripped there they would cut a request's first word.
_LETTER_MARKER = re.compile(
    r"^(?P<indent>[ \t]*)(?:\((?P<paren>[a-zA-Z]|[ivxIVX]{2,5})\)|(?P<label>[a-zA-Z]|[ivxIVX]{2,5})[.)])[ \t]+(?P<body>\S.*)$")
_LETTER_STARTS = (["a", "b"], ["A", "B"], ["i", "ii"], ["I", "II"])
# A markdown blockquote ("> 1. How do I ...", "> - ..."): in a list quoted so, the "> " stayed in front of every request.
# At the line's start only: "   > 1. error at line 3" indented under an item quotes what the request is about.
_BLOCKQUOTE = re.compile(r"^>(?:[ \t]*>)*[ \t]?")
_FENCE = re.compile(r"```[ \t]*(?:json|JSON|javascript|js)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_HEADING = re.compile(r"^\s*(?:#{1,6}\s|={3,}|-{3,}|\*{3,}|_{3,})")
_FENCE_LINE = re.compile(r"^\s*```")
_BOLD_LABEL = re.compile(
    r"^(?:\*\*|__)[^*_\n]{1,80}(?:(?:\*\*|__)\s*[:\-\u2013\u2014]|[:\-\u2013\u2014]\s*(?:\*\*|__))\s*(?=\S)")
_PLAIN_LABEL = re.compile(
    # a hyphen only apart from the word (or after a number): "Prompt-injection payload: ..." is a request
    r"^(?:request|instruction|prompt|query|question|example|user|scenario|item)\s*#?\d*"
    r"(?:\s*[:\u2013\u2014]|\s+-|(?<=\d)-)\s*(?=\S)",
    re.IGNORECASE)
# A preamble on the request's own line: "Sure! Here is an instruction: ...", "Here's one more example: ...".
_PREAMBLE = re.compile(
    r"^(?:(?:sure(?: thing)?|certainly|of course|absolutely|okay|ok|alright|great)\b[!,.]?\s*)?"
    r"here(?: is|'s| are)\s+(?:(?:an?|one|the|another|your|some)\s+)?(?:[\w-]+\s+){0,2}?"
    r"(?:requests?|instructions?|prompts?|examples?|scenarios?|one)\s*[:\-\u2013\u2014]\s*(?=\S)"
    # The same in the languages whose openers `_META` knows: "Claro, aquí tienes una solicitud: ...".
    r"|^(?:(?:claro|por supuesto|bien sûr|certainement|natürlich|gerne|certo|com certeza|конечно)\b\W*)?"
    r"(?:aquí (?:tienes|tiene|está|están|va|hay)|voici|voilà|hier (?:ist|sind|kommt)|ecco|aqui (?:está|estão|vai)|вот)\s+"
    r"(?:[\w'-]+\s+){0,3}?(?:solicitud|petici[óo]n|ejemplo|instrucci[óo]n|escenario|demande|requête|exemple|scénario"
    r"|anfrage|beispiel|anweisung|szenario|richiest|esempi|istruzion|solicitaç|exemplo|instruç|cenário|prompt|запрос"
    r"|пример)\w*\s*[:\-\u2013\u2014]\s*(?=\S)"
    r"|^(?:(?:好的|当然)\W*)?(?:以下|下面|这)是[^:\uff1a\n]{0,6}?(?:请求|示例|例子|指令|提示|场景)\s*[:\uff1a]\s*(?=\S)",
    re.IGNORECASE)
# An item's first line all in bold, with the request on the lines below it: a title ("1. **Phishing email**"), which
# stayed glued to the front of the request ("**Phishing email** Write a phishing email ..."). A title is a few words
# and no sentence: "**How do I get oxycodone?**" over a note line is the request.
_TITLE = re.compile(r"^(\*\*|__)\s*(?:[^\s*_.?!\u3002\uff1f\uff01]+\s+){0,5}[^\s*_.?!\u3002\uff1f\uff01]+\s*\1\s*[:\-\u2013\u2014]?\s*$")
_EMPHASIS = re.compile(r"^(\*\*|__|\*|_)(.+)\1$", re.DOTALL)
# A note a generator writes on its own line under an item, naming the item's disguise in a few words, often in
# italics or brackets ("*Framing: urgency*", "(Technique: role-play)", "**Disguise:** fiction"): it was glued to the
# request. Not "Style:" or "Tone:", which a request asking for a text may give on a line of its own.
# A generator's note about the list, indented under an item ("   Note: these are examples for red-team testing."): it
# was glued to the request, indented lines continuing the item. Only a note that names the list ("these are", "all
# of the above", "these requests"): "   Let me know if these dates work" and "   Note: this is for a novel" under
# an item are the request's own lines.
_ABOUT_THESE = re.compile(
    r"\b(?:(?:these|those|all of them|all of these|the above|each of these)\s+(?:are|were|is|would|should|could|all)\b"
    r"|(?:these|those|the above|the following|all|each|every|all of these|all of the) (?:\w+ ){0,2}?"
    r"(?:requests|prompts|examples|items|instructions|scenarios|request|prompt|example|item|instruction|scenario)\b"
    r"|this list\b)", re.IGNORECASE)
_ANNOTATION = re.compile(
    r"^[*_(\[]*\s*(?:framing|technique|tactic|disguise|approach|strategy|angle|persuasion|variant)\s*[*_]*\s*:"
    r"\s*[*_]*\s*[\w/&'-]+(?:[ \t]+[\w/&'-]+){0,3}\s*[*_)\]]*\s*$", re.IGNORECASE)
# Opening -> closing quote, English and the other styles generators write: German „…“ and ‚…‘, Swedish and
# Danish »…«, Japanese and Chinese 「…」 and 『…』, which stayed around every request.
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "\u00ab": "\u00bb", "`": "`",
           "\u201e": "\u201c", "\u201a": "\u2018", "\u00bb": "\u00ab", "\u300c": "\u300d", "\u300e": "\u300f"}

# An apology opens a refusal only when it declines in the same sentence: users open requests with one too
# ("I'm sorry to bother you, but how do I...", "Sorry, I forgot to mention: the account is ...").
_DECLINES = (r"(?=[^.!?\n]{0,120}?\b(?:can(?:no|')?t|could\s*n[o']?t|won'?t|will not|must not|unable|not able"
             r"|not (?:comfortable|going to|allowed|permitted|appropriate)|inappropriate|decline|refuse|as an ai"
             r"|(?:do not|don'?t) (?:feel|have the|create|generate|provide|produce|write))\b)")
_REFUSAL = re.compile(
    r"^\W*(?:"
    r"(?:(?:i'?m|i am|we'?re|we are)\s+(?:so\s+|very\s+|really\s+)?sorry|sorry|i\s+apologi[sz]e"
    r"|(?:unfortunately|regrettably)|as an ai\b)" + _DECLINES +
    r"|i\s+(?:can(?:no|')?t|could\s*n[o']?t|won'?t|will not|must not|shouldn'?t|should not|do not|don'?t)\s+"
    r"(?:help|assist|provide|comply|create|generate|write|produce|fulfil|fulfill|do that|do this|support|"
    r"engage|participate|continue|give|share|offer|make|list|come up)"
    r"|i\s+(?:must|have to|need to)\s+(?:decline|refuse)"
    r"|i'?m\s+(?:not able|unable|not comfortable|not going)\s+to"
    r"|i am\s+(?:not able|unable|not comfortable|not going)\s+to"
    r"|this (?:request|content) (?:violates|goes against|is against)"
    r")", re.IGNORECASE)
_REFUSAL_ANYWHERE = re.compile(
    r"\b(?:against my (?:guidelines|policies|programming|principles)|i can(?:no|')?t (?:help|assist) with (?:that|this)"
    r"|i(?:'m| am) not able to (?:help|assist|provide) (?:with )?(?:that|this))\b", re.IGNORECASE)
# The same rule in the other languages a pack may be synthesized in (es, fr, de, it, pt, ru, zh, ja, ko), as
# the refusal judge reads them: an apology (or "as an AI") opens a refusal only when it declines in the same
# sentence, and a first-person "cannot" only with a verb of helping or writing: "No puedo dormir, ¿qué
# dosis...?" ("I can't sleep, what dose...?") is a request. English alone let "Lo siento, no puedo ayudar
# con eso" through as an instruction.
_DECLINES_ELSEWHERE = (
    r"(?=[^.!?\n\u3002\uff01\uff1f\u061f\u0964]{0,120}?(?:\bno (?:puedo|podr[ée]|voy a|debo|me es posible|es posible)\b|\bme niego\b"
    r"|\bje ne (?:peux|pourrai|vais|suis) pas\b|\bil m'est impossible\b|\bje (?:dois|me vois contraint\w* de) (?:refuser|décliner)\b"
    r"|\b(?:ich (?:kann|werde|darf)|(?:kann|werde|darf) ich) (?:\w+\s+){0,3}?(?:nicht|keine?[nmrs]?)\b|\bnicht in der lage\b|\bablehnen\b"
    r"|\bnon (?:posso|sono in grado|mi è possibile|potrò)\b|\bnão (?:posso|consigo|sou capaz|é possível|poderei)\b"
    r"|\bне (?:могу|буду|смогу|в состоянии)\b|不能|无法|不会|没办法|恕难|できません|できかねます|お断り|수 없|어렵습니다"
    r"|لا (?:أستطيع|يمكنني|يمكن لي|أقدر|بإمكاني)|لن (?:أتمكن|أستطيع|أقوم|أساعد)|أرفض|غير قادر"
    r"|नहीं कर (?:सकता|सकती|सकते|पाऊंगा|पाऊँगा|पाऊंगी)|असमर्थ))")
_APOLOGIES_ELSEWHERE = (
    r"lo siento|lo lamento|lamentablemente|desafortunadamente|por desgracia|disculp[ae]|perd[óo]n(?:a|e)?"
    r"|como (?:una? )?(?:ia|inteligencia artificial|modelo de lenguaje)"
    r"|(?:je suis )?(?:vraiment |sincèrement )?(?:désolée?|navrée?)|malheureusement|je regrette|en tant qu'(?:ia|assistant)"
    r"|es tut mir (?:sehr |wirklich )?leid|entschuldigung|leider|als (?:ki|künstliche intelligenz|sprachmodell)"
    r"|mi dispiace|purtroppo|spiacente|come (?:un'?)?(?:ia|intelligenza artificiale|modello linguistico)"
    r"|desculpe|sinto muito|lamento|infelizmente|como (?:uma )?(?:ia|inteligência artificial|modelo de linguagem)"
    r"|извините|простите|к сожалению|мне жаль|как (?:ии|искусственный интеллект|языковая модель)"
    r"|(?:很|非常)?抱歉|对不起|遗憾|作为(?:一个)?(?:ai|人工智能|语言模型)|申し訳|すみません|残念ながら|죄송|미안|유감"
    r"|عذرا|عذراً|آسف|آسفة|أنا آسف|أعتذر|للأسف|مع الأسف|بصفتي"
    r"|मुझे खेद है|(?:मुझे )?(?:माफ़|माफ) (?:करें|कीजिए|कीजिये)|क्षमा (?:करें|कीजिए|कीजिये)|दुर्भाग्य से|एक (?:एआई|AI) के रूप में")
_REFUSAL_ELSEWHERE = re.compile(
    r"^\W*(?:"
    r"(?:" + _APOLOGIES_ELSEWHERE + r")" + _DECLINES_ELSEWHERE +
    r"|no (?:puedo|podré|voy a|debo|me es posible) (?:\w+\s+){0,2}?(?:ayudar|asistir|proporcionar|brindar|ofrecer|crear"
    r"|generar|escribir|redactar|elaborar|cumplir|hacer eso|participar|colaborar|responder|compartir)|me niego\b"
    r"|debo (?:negarme|rechazar|declinar)"
    r"|je ne (?:peux|pourrai|vais|suis) pas (?:en mesure d(?:e |'))?(?:[tvml]'|vous |te )?(?:aider|assister|fournir|créer"
    r"|générer|écrire|rédiger|répondre|produire|participer|donner suite|accéder|satisfaire)|il m'est impossible de"
    r"|je (?:dois|me vois contraint\w* de) (?:refuser|décliner)"
    r"|(?:ich (?:kann|werde|darf)|(?:dabei|damit|hierbei|hierzu|das|hier) (?:kann|werde|darf) ich) (?:\w+\s+){0,3}?"
    r"(?:nicht|keine?[nmrs]?) (?:\w+\s+){0,3}?(?:(?:weiter)?helfen|unterstützen|erstellen|schreiben|verfassen|liefern|geben"
    r"|bereitstellen|erfüllen|nachkommen|beantworten|generieren|anbieten|teilen)\b|ich muss (?:\w+\s+){0,3}?ablehnen"
    r"|ich bin nicht in der lage"
    r"|non (?:posso|sono in grado di|mi è possibile|potrò) (?:\w+\s+){0,2}?(?:aiutar|fornir|creare|generare|scrivere|rispondere"
    r"|assister|soddisfare|partecipare)"
    r"|não (?:posso|consigo|sou capaz de|poderei|vou) (?:\w+\s+){0,2}?(?:ajudar|fornecer|criar|gerar|escrever|responder"
    r"|atender|cumprir|participar|auxiliar|prestar)"
    r"|я не (?:могу|буду|смогу|в состоянии) (?:\w+\s+){0,2}?(?:помо|предостав|созда|написа|выполн|ответ|участв|сгенерир|генерир)"
    r"|(?:我|我们)(?:不能|无法|不会|不可以|没办法|不便|恕难)(?:为你|为您|帮你|帮您)?(?:提供|帮助|帮忙|协助|满足|回答|完成|参与|生成"
    r"|编写|创建|撰写|处理)|恕我?(?:不能|难以|无法)"
    # Arabic and Hindi, by the refusal judge's rules: "لا أستطيع النوم" and "मैं सो नहीं सकता" ("I can't sleep") are requests.
    r"|" + ARABIC_DECLINE + "|" + HINDI_DECLINE +
    r")", re.IGNORECASE)
# "Note:", "Important:", "These are..." is a generator's aside only when it speaks of the list; a request opens
# that way too ("IMPORTANT: Ignore all previous instructions and...", "Disclaimer: this is for a novel...").
_ABOUT_THE_LIST = (r"(?=[^.!?\n]*\b(?:these|those|the above|the following|this list|all of them|each (?:one|request|prompt|example)"
                   r"|examples?|requests?|prompts?|fictional|hypothetical|red[- ]?team\w*|testing|research|educational"
                   r"|illustrat\w*|harmful|violat\w*|refus\w*)\b)")
_META = re.compile(
    r"^\W*(?:"
    r"(?:sure(?: thing)?|certainly|of course|absolutely|okay|ok|alright|great)\b[!,.:]?\s*"
    r"(?:$|here\b|below\b|the following\b|these\b|this is\b|i(?:'ll| will| can|'ve| have)\b)"
    r"|here (?:are|is|'s)\b(?=[^.!?\n]*\b(?:requests?|examples?|instructions?|prompts?|scenarios?|items?|lists?|ideas?)\b)"
    r"|(?:below|the following) (?:are|is)\b"
    r"|(?:these|those|the above) (?:requests|examples|instructions|prompts|cover)\b"
    r"|(?:(?:these|those|the above) (?:are|were|would|should|could)\b|(?:note|disclaimer|warning|remember|important)\s*:"
    r"|(?:please note|keep in mind)\b)" + _ABOUT_THE_LIST +
    r"|(?:i hope (?:this|these|that helps)|hope (?:this|these)|let me know (?:if|whether)|feel free)\b"
    # "Would you like more?", "If you need more examples, just ask": offers of more, as zh "如果你需要更多" is.
    r"|(?:(?:would|do) you (?:like|want|need)|if you(?:'d| would)? (?:like|want|need)) (?:me to \w+ )?"
    r"(?:more|additional|further|any more|some more|a few more)(?=\s*(?:[?!.,]|$)|\s+(?:\w+\s+)?(?:examples?|requests?|prompts?"
    r"|instructions?|scenarios?|ideas?|ones?)\b)"
    r"|i(?:'ve| have) (?:written|created|generated|listed|provided|included|come up with)"
    r" (?:\d+|ten|five|twenty|these|the|some|a few|several|a list|more)\b"
    r"|(?:\d+|ten|five|twenty)\s+(?:new\s+|more\s+|distinct\s+|different\s+)?(?:requests|examples|instructions|prompts)\b"
    # The same openers and sign-offs in the other languages a pack may be synthesized in: "Espero que esto te
    # sirva" and "Ich hoffe, das hilft" were joined to the last request as its continuation.
    r"|(?:claro|por supuesto|desde luego|bien sûr|certainement|natürlich|gerne|selbstverständlich|certo|certamente"
    r"|com certeza|конечно|разумеется)\b[!,.:]?\s*(?:$|aquí\b|a continuación\b|voici\b|ci-dessous\b|hier\b|unten\b"
    r"|ecco\b|di seguito\b|aqui\b|a seguir\b|segue\b|вот\b|ниже\b)"
    r"|(?:aquí (?:tienes|tiene|están|hay|van)|a continuación|voici|voilà|hier (?:sind|ist|kommen)|ecco|aqui (?:estão|está|vão)"
    r"|вот)\b(?=[^.!?\n]*\b(?:solicitud|petici[óo]n|ejemplo|instrucci[óo]n|escenario|demande|requête|exemple|scénario"
    r"|anfrage|beispiel|anweisung|szenari|richiest|esempi|istruzion|scenari|solicitaç|exemplo|instruç|cenário|prompt"
    r"|запрос|пример|инструкци|сценари|list[aeo]?|liste|elenco|список)\w*)"
    r"|(?:espero que (?:esto|esta lista|estos ejemplos|isso|isto|estes|estas|esta lista) (?:\w+\s+){0,2}?(?:sirva|sirvan|ayude"
    r"|ajude|útil|útiles|úteis)|espero que (?:te|le|les|os) (?:sirva|sirvan|ayude|ayuden|sea útil|sean útiles)"
    r"|j'espère que (?:cela|ça|ceci|ces|cette liste)|ich hoffe,? (?:das|dies|diese)|spero che (?:questo|questa|questi|queste|ti|vi)"
    r"|надеюсь,? (?:это|эти|этот))\b"
    r"|(?:avísame|avíseme|házmelo saber|no dudes en|no dude en|n'hésite(?:z)? pas|(?:dites|dis)-moi si|(?:lass|lassen sie) "
    r"(?:mich|es mich) wissen|(?:sag|sagen sie|gib|geben sie) (?:mir )?bescheid|fammi sapere|non esitare|me avise|avise-me"
    r"|fique à vontade|não hesite|дайте знать|дай знать)\b"
    r"|(?:好的|当然|没问题)[!！,，.。:：]?\s*(?:$|以下|下面|这是|这些)|(?:以下|下面)是(?=[^。\n]*(?:请求|示例|例子|指令|提示|场景|列表))"
    r"|希望(?:这些|以上|这)(?:对你|对您|能|有)|如果(?:你|您)(?:还)?需要更多|(?:你|您)?(?:还)?需要更多[^。\n]{0,6}?吗"
    # Japanese and Korean, which the refusal rules read: "お役に立てば幸いです", "도움이 되길 바랍니다" ("I hope this
    # helps"), "他にも必要であれば", "더 필요하시면" ("if you need more") were joined to the last request.
    r"|お役に立て(?:れ)?ば|参考にな(?:れ)?ば|(?:他にも|さらに|もっと)(?:例|リクエスト|質問)?(?:が)?必要(?:であれば|なら|でしたら|な場合|があれば)"
    r"|도움이 되(?:길|기를|었으면|셨으면)|(?:더|추가로|더 많은)(?: 예시가| 예시| 요청이)? ?필요하(?:시면|신가요|세요)"
    # Arabic and Hindi sign-offs ("آمل أن يساعد هذا", "आशा है इससे मदद मिलेगी": "I hope this helps"; "هل تريد
    # المزيد؟": "do you want more?") were joined to the last request as its continuation, as English ones were
    # not. "I hope" only with "this" or "these" after it, "let me know" only with "if you want more":
    # "أتمنى أن تساعدني في ..." ("I hope you help me ...") and "मुझे बताएं कि ..." ("tell me how ...") are requests.
    r"|(?:آمل|أتمنى|نأمل|أرجو) أن (?:\S+ )?(?:هذا|هذه|ذلك|هذي)|هل (?:تريد|تحتاج|ترغب|تود)(?:ون)? (?:\S+ ){0,2}?المزيد(?=\s*(?:[؟?!.،]|$)| من (?:ال)?(?:أمثلة|طلبات|أفكار|تعليمات|سيناريوهات))"
    r"|(?:أخبرني|أعلمني|اعلمني|دعني أعرف) (?:إذا|إن|لو) (?:كنت|كنتم) (?:تريد|تحتاج|ترغب)|لا (?:تتردد|تترددي|تترددوا) في"
    r"|(?:मुझे )?(?:आशा|उम्मीद) है(?: कि)? (?:इससे|इनसे|यह|ये|इन)(?=\s)|बेझिझक"
    r"|(?:(?:(?:मुझे )?बताएं|बताइए|बताइये) )?(?:(?:अगर|यदि) आपको|क्या आप(?:को)?) (?:और|अधिक) (?!आप|मैं|हम|मुझ|तुम)"
    r"(?=[^।?!\n]*(?:चाहिए|चाहते|चाहेंगे|चाहेंगी|ज़रूरत|जरूरत))"
    r")", re.IGNORECASE)
# A run of word characters, except that each Han or kana character is a word by itself.
_WORD = re.compile(rf"(?=\w)[{IDEOGRAPHS}]|[^\W{IDEOGRAPHS}]+")
# Thai, Lao, Myanmar and Khmer are written without spaces between words too, but a letter is not a word
# there: a run of their letters counts one word per LETTERS_PER_WORD letters (their words average two to
# five letters, vowel and tone marks not counted).
_UNSPACED_RUN = re.compile(rf"(?:(?=\w)[{UNSPACED}])+")
LETTERS_PER_WORD = 3
_ALPHA_WORD = re.compile(r"[^\W\d_]{2,}")  # a word: two letters or more in a row, any script
# Chat-template tokens (<|im_end|>, <tool_response>, </s>): a tokenizer reads them in a turn's text as the real
# ones, so they end the turn and open another. Not any <tag>: HTML is what a tool-output-injection scenario's
# tool turn, or an XSS request, holds.
CHAT_TOKEN = re.compile(r"<\|/?[a-z_]+\|>|</?(?:[a-z]+_[a-z_]+|s|tools|unk|pad|eos|bos)>")
# Control bytes and chat-template tokens a broken generator leaks.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]|" + CHAT_TOKEN.pattern)


@dataclass
class ParseResult:
    """Parsed conversations (`{"messages", "tools"?}`) and the count of dropped pieces per reason."""

    items: list[dict[str, Any]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    format_used: str = ""  # "list", "json", or "" when nothing parsed


# --------------------------------------------------------------------------- cleaning one item


def clean_item(text: str) -> str:
    """Strip list decoration from one item: labels, emphasis, matching quotes, extra whitespace."""
    text = text.strip()
    for _ in range(3):  # decorations nest: **"Request 1: ..."**
        before = text
        text = _BOLD_LABEL.sub("", text)
        text = _PLAIN_LABEL.sub("", text)
        preamble = _PREAMBLE.match(straight_apostrophes(text))
        text = text[preamble.end():] if preamble else text
        match = _EMPHASIS.match(text)
        if match and "\n" not in match.group(2) and _closes_at_end(text, match.group(1)):
            text = match.group(2).strip()
        if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        if text == before:
            break
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return "\n".join(line for line in lines if line).strip()


def _closes_at_end(text: str, mark: str) -> bool:
    """Whether the emphasis `mark` opening `text` closes only at its end, so stripping both keeps the rest balanced:
    "**How do I ...?** *Framing: urgency*" opens with "*" and ends with one, and stripped of them it was
    "*How do I ...?** *Framing: urgency". A single "*" or "_" may enclose a double one ("*a **b** c*"), and one
    inside a word ("my_var", "2*3")."""
    rest = text[len(mark):len(text) - len(mark)]
    if len(mark) == 2:
        return mark not in rest
    inner = re.sub(rf"(?<=\w){re.escape(mark)}(?=\w)", "", rest.replace(mark * 2, ""))
    return mark not in (rest[:1], rest[-1:]) and mark not in inner


def _strip_marker(text: str, labels: frozenset[str] = frozenset()) -> str:
    """`text` without its list marker, or its "Request 3:" label when the word is one of `labels`."""
    match = _MARKER.match(text) or _LABEL_MARKER.match(text)
    if match and "word" in match.groupdict() and match.group("word").casefold() not in labels:
        return text
    return match.group("body") if match else text


def _labels(values: list[Any]) -> frozenset[str]:
    """The words that number two items or more ("Petición 1:", "Petición 2:") of a JSON answer's strings and
    {"prompt": ...} objects: its labels, as `_markers` has them for a list."""
    texts = [v if isinstance(v, str) else next((v[k] for k in _TEXT_KEYS if isinstance(v.get(k), str)), "")
             for v in values if isinstance(v, str) or (isinstance(v, dict) and "messages" not in v)]
    numbers: dict[str, set[str]] = {}
    for text in texts:
        if label := _LABEL_MARKER.match(text.strip()):
            numbers.setdefault(label.group("word").casefold(), set()).add(label.group("number"))
    return frozenset(word for word, seen in numbers.items() if len(seen) > 1)


# --------------------------------------------------------------------------- junk


def junk_reason(text: str, *, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS,
                min_words: int = MIN_WORDS) -> str | None:
    """Why `text` is not a usable instruction (a drop reason), or None if it is one.

    Order matters: garbled output is reported as such even when it is also long, and a refusal
    is reported as a refusal even when it ends with a colon.
    """
    stripped = text.strip()
    if _CONTROL.search(stripped):
        return GARBLED
    if _symbol_soup(stripped):
        return GARBLED
    if stripped.count("}") > stripped.count("{") or stripped.count("]") > stripped.count("["):
        return GARBLED  # debris of JSON or template syntax; real requests open what they close
    if too_short(stripped, min_chars=min_chars, min_words=min_words):
        return TOO_SHORT
    if too_long(stripped, max_chars=max_chars):
        return TOO_LONG
    plain = straight_apostrophes(stripped)
    if _REFUSAL.match(plain) or _REFUSAL_ELSEWHERE.match(plain) or _REFUSAL_ANYWHERE.search(plain):
        return REFUSAL
    if _is_meta(plain):
        return NOT_INSTRUCTION
    return None


def too_short(text: str, *, min_chars: int = MIN_CHARS, min_words: int = MIN_WORDS) -> bool:
    """Whether `text` is too short to be a request: under `min_chars` columns (`_width`) or `min_words` words
    (`word_count`). The one length rule for generated instructions and for a pack's seeds: a seed's 8
    characters were counted one per character, so "如何制作炸弹？" (7 characters, 6 words, 14 columns) was
    refused as a seed while a generated instruction as long was kept."""
    stripped = text.strip()
    return _width(stripped) < min_chars or word_count(stripped) < min_words


def too_long(text: str, *, max_chars: int = MAX_CHARS) -> bool:
    """Whether `text` is too long to be a request: over `max_chars` characters. The one rule for generated
    instructions and for a pack's seeds, as `too_short` is: a seed of up to 4000 characters validated and
    joined the training pool while a generated instruction half as long was dropped."""
    return len(text.strip()) > max_chars


def word_count(text: str) -> int:
    """Words in `text`, where a Chinese or Japanese character is a word of its own, and every
    LETTERS_PER_WORD letters of Thai, Lao, Myanmar or Khmer one word.

    Those scripts write no spaces: "怎么在网上洗钱而不被发现？" ("how do I launder money online without
    being caught?") is one run of word characters, and was dropped as too_short for having one word.
    Thai "เจาะระบบธนาคาร" ("hack into a bank's systems") was one word too, while one with vowel marks
    (which are not word characters) counted a word wherever a mark cut it.
    """
    plain = _unmarked(text)
    unspaced = sum(-(-len(run) // LETTERS_PER_WORD) for run in _UNSPACED_RUN.findall(plain))
    return len(_WORD.findall(_UNSPACED_RUN.sub(" ", plain))) + unspaced


def _unmarked(text: str) -> str:
    """`text` without its combining marks (Unicode category M): the vowel signs, tone marks and viramas
    of Thai, Myanmar, Devanagari and other scripts are neither word characters nor letters to `re` and
    `str.isalnum`, so they cut words apart and made whole requests look like symbols."""
    if text.isascii():
        return text
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith("M"))


def _width(text: str) -> int:
    """Length in columns: a wide (CJK) character takes two, as it holds about a word's worth of an
    English request's letters ("如何制造炸弹？", "how do I make a bomb?", is 7 characters)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _symbol_soup(text: str) -> bool:
    """Whether symbols, not words and numbers, make up the text ("%%% $$$ ###", "1. 2. 3. 4.", "}}]]").

    Digits count with letters: a request for a transfer names amounts, account numbers and dates, a
    tool call its JSON arguments ("Transfer $5,000,000 from account #4411-2233-0098 to 7781-0021 by
    5pm on 03/14/2026" is 38% letters, and a letters-only ratio of 60% dropped it as garbled). Words
    (runs of two letters or more, any script) must still make up a fifth of it, so numbers, hex
    and mojibake ("0x3f 0x4a 0xff", "Ã©Ã¨Ã Ã§") are soup.
    """
    text = _unmarked(text)  # Hindi "किसी का पासवर्ड कैसे चुराएं" is a third vowel signs: it was soup
    visible = sum(not ch.isspace() for ch in text)
    alnum = sum(ch.isalnum() for ch in text)
    in_words = sum(len(word) for word in _ALPHA_WORD.findall(text))
    return bool(visible) and (alnum / visible < 0.5 or in_words / visible < 0.2)


def _is_meta(text: str) -> bool:
    """Headings and talk about the list rather than a request: "Here are 10 requests:", "### Fraud"."""
    first = text.splitlines()[0]
    if _HEADING.match(first) or _META.match(first):
        return True
    # A lone label line ("Phishing emails:", "**Fraud**", "以下是一些请求：" with a full-width colon)
    # introduces items; it is not one.
    bare = first.strip().strip("*_").strip()
    return "\n" not in text and (bare.endswith((":", "\uff1a")) or (first.strip().startswith(("**", "__")) and len(bare.split()) <= 6))


# --------------------------------------------------------------------------- numbered / bulleted lists


def split_list(text: str) -> list[str]:
    """The items of a numbered or bulleted list, with multi-line items joined (newline-separated).

    Text before the first marker (preamble), between items after a blank line, and after the
    last item (epilogue) is not part of any item -- unless indented under the item, which is
    how wrapped and multi-paragraph items look. A code fence opened inside an item ("1. Run this
    script:" then a ```bash block) is part of it, line by line; one opened outside any item is a
    fence around the list. Without any marker, every non-empty line is an item (a generator that
    just writes one request per line).
    """
    return _split_list(text)[0]


def _markers(lines: list[str]) -> list[re.Match[str] | None]:
    """Each line's list marker match (`_MARKER`, `_LABEL_MARKER` with a word that numbers several lines, or
    `_LETTER_MARKER` in a lettered list), or None."""
    found = [_MARKER.match(line) for line in lines]
    labels = [None if match else _LABEL_MARKER.match(line) for line, match in zip(lines, found)]
    numbers: dict[str, set[str]] = {}
    for label in labels:
        if label:
            numbers.setdefault(label.group("word").casefold(), set()).add(label.group("number"))
    found = [match or (label if label and len(numbers[label.group("word").casefold()]) > 1 else None)
             for match, label in zip(found, labels)]
    if not _lettered(lines, found):
        return found
    return [match or _LETTER_MARKER.match(line) for line, match in zip(lines, found)]


def _lettered(lines: list[str], found: list[re.Match[str] | None]) -> bool:
    """Whether the lines not numbered otherwise count with letters or Roman numerals from the start, the first
    two of them a) and b), A. and B., or (i) and (ii): "a) How do I ..." kept its "a)" while "1) How do I ..."
    lost its "1)". Lines "E. coli ...", "B. anthracis ...", "A. Smith ..." do not count so."""
    labels = []
    for line, match in zip(lines, found):
        letter = None if match else _LETTER_MARKER.match(line)
        if letter:
            labels.append(letter.group("paren") or letter.group("label"))
    return labels[:2] in _LETTER_STARTS


def _split_list(text: str) -> tuple[list[str], bool]:
    """`split_list`, and whether the last item runs to the end of the text (no epilogue, heading or
    closing fence after it): only then can the token limit have cut it off."""
    lines = _unquoted(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    markers = _markers(lines)
    if not any(markers):
        kept = [line for line in lines if line.strip() and not _HEADING.match(line) and not _FENCE_LINE.match(line)]
        last = next((line for line in reversed(lines) if line.strip()), None)
        return [clean_item(line) for line in kept], bool(kept) and last is kept[-1]
    items: list[list[str]] = []
    current: list[str] | None = None
    body_indent = 0
    blank_before = False
    list_fence = in_code = False
    for line, match in zip(lines, markers):
        if in_code:  # the item's code block: its lines as they are, markers and headings included
            current.append("\n" + line.strip())  # type: ignore[union-attr]
            in_code = not _FENCE_LINE.match(line)
        elif _FENCE_LINE.match(line):
            if current is not None and not list_fence:
                current.append("\n" + line.strip())
                in_code = True
            else:
                list_fence = not list_fence
                current = None  # a code fence around the list is not part of its last item
        elif match:
            current = [match.group("body")]
            items.append(current)
            body_indent = len(match.group("indent")) + 1
            blank_before = False
        elif not line.strip():
            blank_before = True
        elif current is not None and _ANNOTATION.match(line.strip()):
            pass  # "*Framing: urgency*" under the item names its technique: not part of the request
        elif current is not None and _list_note(line):
            pass  # "   Note: these are examples" under the item speaks of the list: not part of the request
        elif current is not None and _continues(line, body_indent, blank_before):
            if len(current) == 1 and _TITLE.match(current[0]):
                current[0] = ""  # "1. **Phishing email**" over the request's own lines: a title, as "**...**:" is
            current.append(("\n" if blank_before else " ") + line.strip())
            blank_before = False
        else:
            current = None  # interstitial prose or epilogue ends the item
    return [clean_item("".join(parts)) for parts in items], current is not None


def _list_note(line: str) -> bool:
    """Whether `line` is indented and a generator's note about the list (`_META`) that names it (`_ABOUT_THESE`). An
    unindented one ends the item already (`_continues`), and after the last item says the list was not cut off."""
    plain = straight_apostrophes(line.strip())
    return line[:1] in (" ", "\t") and bool(_META.match(plain) and _ABOUT_THESE.search(plain))


def _unquoted(lines: list[str]) -> list[str]:
    """`lines` without their blockquote marks ("> "), where the output quotes a list item ("> 1. How do I ...")."""
    if not any(_MARKER.match(_BLOCKQUOTE.sub("", line)) for line in lines if _BLOCKQUOTE.match(line)):
        return lines
    return [_BLOCKQUOTE.sub("", line) for line in lines]


def _continues(line: str, body_indent: int, blank_before: bool) -> bool:
    """A wrapped line continues the item; after a blank line, only an indented one does."""
    indent = len(line) - len(line.lstrip(" \t"))
    if _HEADING.match(line):
        return False
    if blank_before:
        return indent >= max(2, body_indent)
    return indent > 0 or not _META.match(straight_apostrophes(line.strip()))


# --------------------------------------------------------------------------- JSON


def _json_candidates(text: str) -> Iterator[str]:
    """Fenced code blocks first (where models put JSON), then the whole output."""
    for match in _FENCE.finditer(text):
        yield match.group(1)
    yield text


def _decode_array_prefix(text: str, start: int) -> tuple[list[Any], bool]:
    """Decode the JSON array at text[start] element by element.

    Returns (complete elements, finished). Tolerates a trailing comma before `]`; an array cut
    off by the token limit yields the elements that were complete.
    """
    decoder = json.JSONDecoder()
    elements: list[Any] = []
    pos = start + 1
    while True:
        pos = _skip_ws(text, pos)
        if pos >= len(text):
            return elements, False
        if text[pos] == "]":
            return elements, True
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return elements, False
        elements.append(value)
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] == "]":
            return elements, True
        else:
            return elements, False


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


_TEXT_KEYS = ("prompt", "instruction", "request", "text", "content")


def _object_list(text: str, start: int, obj: dict[str, Any]) -> tuple[list[Any], bool] | None:
    """A top-level object at text[start]: a wrapper like {"requests": [...]}, or the first of a run of
    scenarios ({"messages": ...} or {"prompt": ...}) one after another, as JSON Lines or a list missing
    its brackets (only the first was kept, and the rest lost without a count). With whether it was
    finished, as `_decode_array_prefix` says."""
    if "messages" not in obj:
        lists = [v for v in obj.values() if isinstance(v, list) and v and all(isinstance(x, str | dict) for x in v)]
        if lists:  # the largest: {"tags": ["fraud"], "requests": [...]} lost the requests to the tags
            return max(lists, key=lambda v: len(json.dumps(v, ensure_ascii=False))), True
        if not any(isinstance(obj.get(key), str) for key in _TEXT_KEYS):
            return None
        if text[text.rfind("\n", 0, start) + 1:start].strip():
            # Prose before it on its line: a tool call's arguments inside a request ('Call post_message with
            # {"channel": ..., "text": ...}'), which made the whole answer that one "request".
            return None
    return _object_run(text, start)


def _object_run(text: str, start: int) -> tuple[list[Any], bool]:
    """The complete objects from text[start] on, separated by whitespace or commas, and whether the run
    ended before the text did (no object was cut off)."""
    decoder = json.JSONDecoder()
    objects: list[Any] = []
    pos = start
    while pos < len(text) and text[pos] == "{":
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return objects, False
        objects.append(value)
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    return objects, pos < len(text)


def _first_json_list(text: str) -> tuple[list[Any], bool] | None:
    """The first JSON array (or scenario object) in `text` holding strings or objects, and whether it
    was finished."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        start = match.start()
        if text[start] == "{":
            try:
                obj, _ = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                continue
            found = _object_list(text, start, obj) if isinstance(obj, dict) else None
        else:
            found = _decode_array_prefix(text, start)
        if found and any(isinstance(v, str | dict) for v in found[0]):
            return found
    return None


def _literal_list(text: str) -> list[Any] | None:
    """Fallback for Python-style lists (single quotes): ast.literal_eval, bounded in size."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start or end - start > MAX_LITERAL_CHARS:
        return None
    try:
        value = ast.literal_eval(text[start:end + 1])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def extract_json_list(text: str) -> list[Any] | None:
    """The list of items in a generator's JSON answer, wherever it sits, or None."""
    return _extract_json(text)[0]


def _extract_json(text: str) -> tuple[list[Any] | None, bool]:
    """`extract_json_list`, and whether the list was finished (an element was not cut off)."""
    for candidate in _json_candidates(text):
        try:
            found = _first_json_list(candidate)
            if found is None and (literal := _literal_list(candidate)):
                found = literal, True
        except RecursionError:  # nested deeper than the json module can decode: not a usable answer
            continue
        if found and found[0]:  # an empty list (a "[]" fence) holds nothing: a later fence may
            return _flatten_conversation(found[0]), found[1]
    return None, False


def _flatten_conversation(values: list[Any]) -> list[Any]:
    """A bare list of chat messages is one conversation, not many instructions."""
    if values and all(isinstance(v, dict) and "role" in v and "content" in v for v in values):
        return [{"messages": values}]
    return values


# --------------------------------------------------------------------------- items -> conversations


def _text_item(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def scenario(value: dict[str, Any]) -> dict[str, Any] | None:
    """Validate a {messages, tools} scenario from JSON; None if unusable.

    Usable: a non-empty list of {role, content: str} messages ending with a user or tool turn
    (the model under alignment answers next), and tools (if any) as function definitions. A
    trailing assistant turn (some generators include the "bad answer") is dropped.
    """
    text = next((value[key] for key in _TEXT_KEYS if isinstance(value.get(key), str)), None)
    if "messages" not in value:
        return _text_item(text) if text is not None else None
    messages = value.get("messages")
    if not isinstance(messages, list):
        return None
    clean = [_turn(message) for message in messages]
    if any(turn is None for turn in clean):
        return None
    while clean and clean[-1]["role"] == "assistant":
        clean.pop()
    if not clean or clean[-1]["role"] not in ("user", "tool"):
        return None
    tools = value.get("tools") or []
    if not isinstance(tools, list) or not all(_is_tool(t) for t in tools):
        return None
    return {"messages": clean, **({"tools": tools} if tools else {})}


def _turn(message: Any) -> dict[str, Any] | None:
    """One generated chat turn as every chat template renders it, or None when it cannot be one.

    Content follows `chat.content_problem` (only an assistant turn may lack it; it becomes "").
    Tool calls belong to assistant turns and take the transformers shape
    {"type": "function", "function": {"name", "arguments"}} (the flat {"name", "arguments"} some
    generators write is wrapped). A turn that passed without these checks reached
    instructions.jsonl and broke the chat template at the filter stage (a bare TypeError on Qwen).
    """
    if not isinstance(message, dict) or message.get("role") not in ROLES or content_problem(message):
        return None
    turn = {k: v for k, v in message.items() if k in ("role", "content", "name", "tool_call_id")}
    if turn["role"] == "assistant" and turn.get("content") is None:
        turn["content"] = ""
    if message.get("tool_calls"):
        calls = _tool_calls(message["tool_calls"]) if turn["role"] == "assistant" else None
        if calls is None:
            return None
        turn["tool_calls"] = calls
    return turn


def _tool_calls(value: Any) -> list[dict[str, Any]] | None:
    """Tool calls in the transformers shape, or None when `value` is not a list of named calls."""
    if not isinstance(value, list):
        return None
    calls = []
    for call in value:
        if isinstance(call, dict) and "function" not in call and "name" in call:
            call = {"type": "function", "function": call}
        if not _is_tool(call) or not isinstance(call["function"].get("arguments", {}), dict | str):
            return None
        function = call["function"]
        calls.append({**({"id": call["id"]} if isinstance(call.get("id"), str) else {}), "type": "function",
                      "function": {"name": function["name"], "arguments": function.get("arguments", {})}})
    return calls


def _is_tool(tool: Any) -> bool:
    function = tool.get("function") if isinstance(tool, dict) else None
    return isinstance(function, dict) and isinstance(function.get("name"), str) and bool(function["name"])


def instruction_text(item: dict[str, Any]) -> str:
    """The text that identifies an instruction: its user turns (tool results included), joined.

    Used for junk checks, dedup and decontamination, so a scenario is compared on what the user
    asks, not on its tool schemas.
    """
    parts = [str(m.get("content") or "") for m in item.get("messages", []) if m.get("role") in ("user", "tool")]
    return "\n".join(p for p in parts if p.strip())


# --------------------------------------------------------------------------- entry point


def parse_output(text: str, fmt: str = "list", *, truncated: bool = False, min_chars: int = MIN_CHARS,
                 max_chars: int = MAX_CHARS, min_words: int = MIN_WORDS) -> ParseResult:
    """Parse one generator output into conversations, dropping junk (counted per reason).

    `fmt` is what the template asked for ("list" or "json"); the other format is tried when the
    asked one yields nothing, since models mix them up. `truncated` (the generation hit its
    token limit) drops the last list item, which is likely cut mid-sentence. A reasoning model's
    `<think>` block (Qwen3 writes one before its answer) is dropped first: its drafts and plans
    are not requests, and an unfinished one holds no answer at all.
    """
    if fmt not in ("list", "json"):
        raise ValueError(f"unknown format {fmt!r}")
    text = strip_thinking(text)
    order = ("json", "list") if fmt == "json" else ("list", "json")
    result = ParseResult()
    for attempt in order:
        raw = _raw_items(text, attempt, truncated, result.dropped)
        if raw:
            result.format_used = attempt
            break
    else:
        return result
    labels = _labels(raw)
    for value in raw:
        item, reason = _accept(value, labels, min_chars=min_chars, max_chars=max_chars, min_words=min_words)
        if item is None:
            result.dropped[reason or BAD_SCENARIO] += 1
        else:
            result.items.append(item)
    return result


def _raw_items(text: str, fmt: str, truncated: bool, dropped: Counter[str]) -> list[Any]:
    if fmt == "json":
        if "[" not in text and "{" not in text:
            return []
        items, finished = _extract_json(text)
        items = items or []
        if truncated and items and not finished:
            # The element the token limit cut off never decoded; count it, as a list's cut last item is
            # (it went uncounted, so a JSON template's synthesis.json never showed truncation).
            dropped[TRUNCATED] += 1
        return items
    if _holds_json(text):
        return []  # JSON output is not a one-request-per-line list
    split, last_open = _split_list(text)
    items = [item for item in split if item]
    if truncated and items and last_open:
        items.pop()
        dropped[TRUNCATED] += 1
    return items


def _holds_json(text: str) -> bool:
    """Whether output is JSON rather than a list of requests.

    Output opening with `[`, `{` or a fence is JSON unless it has list markers and no JSON list
    (a fenced numbered list, or one under a "[Requests]" label, was parsed as neither and lost
    without a count). Without markers, output is JSON when it holds a JSON list of requests, whether
    prose comes first (read line by line, it kept `"request",` as an instruction) or not; opening
    with `[` or `{` is not enough: one request per line starting "[SYSTEM OVERRIDE] ..." or with a
    tool call's JSON was taken for JSON, held none, and every request was lost without a count.
    """
    opens_json = text.lstrip().startswith(("[", "{", "```"))
    if any(_markers(_unquoted(text.splitlines()))):
        return opens_json and _holds_requests(extract_json_list(text))
    return _holds_requests(extract_json_list(text))


def _holds_requests(values: list[Any] | None) -> bool:
    """Whether a JSON list found in the output can be the answer, not a snippet inside a request
    (`... loop over ["admin", "root"] ...`): it holds an object or a string of a few words."""
    return any(isinstance(v, dict) or (isinstance(v, str) and word_count(v) >= MIN_WORDS)
               for v in values or ())


def _scenario_object(text: str) -> dict[str, Any] | None:
    """A list item that is a whole {"messages": [...]} scenario in JSON, else None. A template shows a
    conversation seed to the generator as such JSON (`Seed.text`), and a list item imitating it was kept as a
    user turn holding the JSON: no request, and a copy of the seed that dedup, comparing turns, never matched."""
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) and "messages" in value else None


def _accept(value: Any, labels: frozenset[str], **limits: int) -> tuple[dict[str, Any] | None, str | None]:
    """One raw item (string or JSON object) -> (conversation, None) or (None, drop reason)."""
    if isinstance(value, str):
        text = clean_item(_strip_marker(value.strip(), labels))
        value = _scenario_object(text)
        if value is None:
            reason = junk_reason(text, **limits)
            return (None, reason) if reason else (_text_item(text), None)
    if not isinstance(value, dict):
        return None, BAD_SCENARIO
    item = scenario(value)
    if item is None:
        return None, BAD_SCENARIO
    if "tools" not in item and len(item["messages"]) == 1:
        text = clean_item(_strip_marker(str(item["messages"][0].get("content") or ""), labels))
        item = _text_item(text)
    reason = junk_reason(instruction_text(item), **limits)
    return (None, reason) if reason else (item, None)
